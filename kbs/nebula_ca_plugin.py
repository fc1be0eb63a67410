"""trustee's ``nebula-ca`` plugin: an attested caller gets a Nebula overlay-network host
certificate signed by the KBS's Nebula CA, made with the ``nebula-cert`` program.

``GET /kbs/v0/nebula-ca/credential?name=N&ip=A/P[&duration=D][&groups=G][&subnets=S]``: the
attestation token and the resource policy (``data.plugin == "nebula-ca"``) decide; the answer,
sealed to the TEE key, is trustee's JSON ``{"node_crt":[bytes],"node_key":[bytes],"ca_crt":[bytes]}``
(byte arrays, as serde writes ``Vec<u8>``).

Config as trustee's: ``work_dir`` (default ``/opt/confidential-containers/kbs/nebula-ca``; the CA
lives in ``<work_dir>/ca/ca.{crt,key}`` and is created self-signed when both are absent),
``nebula_cert_bin_path`` (default ``nebula-cert`` on PATH), ``[plugins.ca_config]`` (``name``,
``argon_*``, ``curve``, ``duration``, ``groups``, ``ips``, ``out_qr``, ``subnets``).
Trustee requires nebula-cert >= 1.9.5; ``min_nebula_cert_version`` (this KBS's key) lowers that,
e.g. to Debian 12's 1.6.1, whose commands and flags are the same."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coco_common.files import read_bounded

from .errors import KbsConfigError, PluginInternalError
from .external_plugin import PluginCall

__all__ = ["NebulaCaPlugin"]

DEFAULT_WORK_DIR = "/opt/confidential-containers/kbs/nebula-ca"
DEFAULT_CA_NAME = "Trustee Nebula CA plugin"
MIN_VERSION = "1.9.5"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DURATION = re.compile(r"^(\d{1,6}(h|m|s|ms))+$")
_LIST_ITEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_CA_STR = ("name", "curve", "duration", "groups", "ips", "out_qr", "subnets")
_CA_INT = ("argon_iterations", "argon_memory", "argon_parallelism")
#: a Nebula certificate or key file (a PEM of a few hundred bytes)
_CERT_FILE_LIMIT = 64 * 1024


def _fail(msg: str) -> PluginInternalError:
    return PluginInternalError(f"Plugin internal error: {msg}")


def _version_tuple(v: str) -> tuple[int, ...]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v)
    if not m:
        raise KbsConfigError(f"plugins.nebula-ca: cannot parse nebula-cert version {v[:40]!r}")
    return tuple(int(x) for x in m.groups())


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if r.returncode != 0:
        raise KbsConfigError(f"plugins.nebula-ca: {Path(argv[0]).name} {argv[1]} failed")
    return r.stdout.decode("utf-8", "replace")


class NebulaCaPlugin:
    def __init__(self, binary: str, work_dir: Path) -> None:
        self._bin = binary
        self._work = work_dir
        self.crt = work_dir / "ca" / "ca.crt"
        self.key = work_dir / "ca" / "ca.key"
        #: nebula-cert runs at most this many at once
        self._sem = asyncio.Semaphore(4)
        #: ca.crt as last read, and the (inode, size, mtime) it was read at
        self._ca: tuple[tuple[int, int, int], bytes] | None = None

    def _ca_crt(self) -> bytes:
        """ca.crt, read again only when the file changed (an operator replaced the CA).
        Blocking: called at start and in a worker thread per request."""
        st = os.stat(self.crt)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._ca is None or self._ca[0] != stamp:
            self._ca = (stamp, read_bounded(self.crt, _CERT_FILE_LIMIT))
        return self._ca[1]

    def _credential(self, node_crt: Path, node_key: Path) -> bytes:
        """The answer: trustee's JSON of byte arrays (blocking reads, in a worker thread)."""
        out = {
            "node_crt": list(read_bounded(node_crt, _CERT_FILE_LIMIT)),
            "node_key": list(read_bounded(node_key, _CERT_FILE_LIMIT)),
            "ca_crt": list(self._ca_crt()),
        }
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> NebulaCaPlugin:
        binary = shutil.which(str(options.get("nebula_cert_bin_path") or "nebula-cert"))
        if binary is None:
            raise KbsConfigError("plugins.nebula-ca: nebula-cert not found")
        out = _run([binary, "--version"]).strip()
        version = out.removeprefix("Version: ").strip()
        need = str(options.get("min_nebula_cert_version") or MIN_VERSION)
        if _version_tuple(version) < _version_tuple(need):
            raise KbsConfigError(f"plugins.nebula-ca: nebula-cert {version} is older than {need}")
        work = Path(str(options.get("work_dir") or DEFAULT_WORK_DIR))
        p = cls(binary, work)
        try:
            p.crt.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KbsConfigError(f"plugins.nebula-ca: work_dir is not usable: {exc.strerror}") from exc
        if not p.crt.exists() and not p.key.exists():
            ca = options.get("ca_config") or {}
            if not isinstance(ca, Mapping):
                raise KbsConfigError("plugins.nebula-ca.ca_config must be a table")
            args = ["-name", str(ca.get("name") or DEFAULT_CA_NAME)]
            for k in _CA_STR[1:]:
                if ca.get(k) is not None:
                    args += [f"-{k.replace('_', '-')}", str(ca[k])]
            for k in _CA_INT:
                if ca.get(k) is not None:
                    args += [f"-{k.replace('_', '-')}", str(int(ca[k]))]
            _run([binary, "ca", *args, "-out-crt", str(p.crt), "-out-key", str(p.key)])
        if not p.crt.exists() or not p.key.exists():
            raise KbsConfigError("plugins.nebula-ca: Nebula CA not found (ca.crt and ca.key must both exist)")
        _run([binary, "print", "-path", str(p.crt)])
        try:
            p._ca_crt()
        except (OSError, ValueError) as exc:
            raise KbsConfigError(f"plugins.nebula-ca: {p.crt} cannot be read: {exc}") from exc
        return p

    # --- trustee's ClientPlugin -----------------------------------------------------------
    async def validate_auth(self, c: PluginCall) -> bool:
        return False

    async def encrypted(self, c: PluginCall) -> bool:
        return True

    @staticmethod
    def _params(q: Mapping[str, str]) -> list[str]:
        name, ip = q.get("name"), q.get("ip")
        if not name or not ip:
            raise _fail("the credential needs the name and ip query parameters")
        if not _NAME.fullmatch(name):
            raise _fail("name is not a valid host name")
        try:
            ipaddress.ip_interface(ip)
        except ValueError as exc:
            raise _fail("ip must be an address with a prefix length, e.g. 10.9.0.2/24") from exc
        if "/" not in ip:
            raise _fail("ip must be an address with a prefix length, e.g. 10.9.0.2/24")
        args = ["-name", name, "-ip", ip]
        if q.get("duration") is not None:
            if not _DURATION.fullmatch(q["duration"]):
                raise _fail("duration is not a Go duration such as 8760h")
            args += ["-duration", q["duration"]]
        for k in ("groups", "subnets"):
            v = q.get(k)
            if v is not None:
                if not all(_LIST_ITEM.fullmatch(x.strip()) for x in v.split(",")):
                    raise _fail(f"{k} is not a comma-separated list")
                args += [f"-{k}", v]
        return args

    async def _exec(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self._bin, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise _fail(f"nebula-cert {argv[0]} timed out") from exc
        if proc.returncode != 0:
            raise _fail(f"nebula-cert {argv[0]} failed: {err.decode('utf-8', 'replace').strip()[:200]}")

    async def handle(self, c: PluginCall) -> bytes:
        if len(c.path) != 1:
            raise _fail("Illegal path. Only one path segment is supported")
        if c.method != "GET":
            raise _fail("Illegal HTTP method. Only GET is supported")
        if c.path[0] != "credential":
            raise _fail(f"{c.path[0][:64]} not supported")
        args = self._params(c.query)
        async with self._sem:
            with tempfile.TemporaryDirectory(dir=self._work) as d:
                nk, nc = Path(d) / "node.key", Path(d) / "node.crt"
                await self._exec("sign", *args, "-ca-key", str(self.key), "-ca-crt", str(self.crt),
                                 "-out-key", str(nk), "-out-crt", str(nc))  # fmt: skip
                await self._exec("verify", "-ca", str(self.crt), "-crt", str(nc))
                try:
                    return await asyncio.to_thread(self._credential, nc, nk)
                except (OSError, ValueError) as exc:
                    raise _fail("the Nebula certificate files cannot be read") from exc

    async def close(self) -> None:
        return None
