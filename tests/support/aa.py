"""Start the ``attestation-agent`` console script as a real process on a
temporary Unix socket, and talk to it with a small ttRPC client written from
the framing notes (reference guest-components.md §1.1), independent of
:mod:`coco_rpc`.

    from tests.support.aa import start_aa

    with start_aa(tmp_path, kbs_url=kbs.url) as aa:
        aa.address            # "unix:///.../aa.sock" for CDH's [aa] aa_socket
        code, msg, payload = aa.call("GetTeeType", b"")

``start_aa`` waits until the socket exists (15 s by default) and stops the
process (SIGTERM, then SIGKILL) when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AA_SERVICE",
    "AaProcess",
    "aa_executable",
    "launch_aa",
    "start_aa",
    "ttrpc_call",
    "wait_for_socket",
]

AA_SERVICE = "attestation_agent.AttestationAgentService"
_ROOT = Path(__file__).resolve().parents[2]
_SUN_PATH_MAX = 100


def aa_executable() -> str:
    exe = Path(sys.executable).parent / "attestation-agent"
    if exe.exists():
        return str(exe)
    venv = _ROOT / ".venv" / "bin" / "attestation-agent"
    return str(venv)


# --- a minimal ttRPC client ----------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    out: dict[int, list[int | bytes]] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wt = key >> 3, key & 7
        value: int | bytes
        if wt == 0:
            value, i = _read_varint(data, i)
        elif wt == 2:
            n, i = _read_varint(data, i)
            value, i = data[i : i + n], i + n
        else:
            raise ValueError(f"unexpected wire type {wt}")
        out.setdefault(num, []).append(value)
    return out


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("ttRPC peer closed the connection")
        buf += chunk
    return buf


def ttrpc_call(
    path: str | os.PathLike[str],
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout: float = 30.0,
    send_deadline: bool = True,
) -> tuple[int, str, bytes]:
    """One ttRPC request on a fresh connection: ``(status code, message, payload)``.
    ``timeout`` bounds the wait here and, unless ``send_deadline`` is False, is sent
    as the request's ttRPC deadline."""
    req = _field(1, service.encode()) + _field(2, method.encode()) + _field(3, payload)
    if send_deadline:
        req += _varint(4 << 3) + _varint(int(timeout * 1e9))
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(struct.pack(">IIBB", len(req), 1, 1, 0) + req)
        length, stream, mtype, _flags = struct.unpack(">IIBB", _recv_exact(s, 10))
        body = _recv_exact(s, length)
    if stream != 1 or mtype != 2:
        raise ValueError(f"unexpected ttRPC frame: stream {stream}, type {mtype}")
    resp = _fields(body)
    code, msg = 0, ""
    if 1 in resp:
        status = _fields(resp[1][0])  # type: ignore[arg-type]
        code = int(status.get(1, [0])[0])  # type: ignore[arg-type]
        msg = bytes(status.get(2, [b""])[0]).decode(errors="replace")  # type: ignore[arg-type]
    return code, msg, bytes(resp.get(2, [b""])[0])  # type: ignore[arg-type]


# --- the process ---------------------------------------------------------------------------


@dataclass
class AaProcess:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path
    #: a private directory made for the socket (removed by stop()), if any
    sock_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    def call(self, method: str, payload: bytes = b"", *, timeout: float = 30.0) -> tuple[int, str, bytes]:
        return ttrpc_call(self.socket_path, AA_SERVICE, method, payload, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
        return self.proc.returncode


def launch_aa(
    workdir: Path,
    *,
    config_toml: str | None = None,
    kbs_url: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AaProcess:
    """Start the process without waiting (see :func:`wait_for_socket`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "aa.sock"
    sock_dir = None
    if len(str(sock)) > _SUN_PATH_MAX:  # AF_UNIX paths are limited to 107 bytes
        sock_dir = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
        sock = sock_dir / "aa.sock"
    cmd = [aa_executable(), "--attestation_sock", f"unix://{sock}"]
    if config_toml is None and kbs_url is not None:
        config_toml = f'[token_configs.kbs]\nurl = "{kbs_url}"\n'
    if config_toml is not None:
        cfg = workdir / "aa.toml"
        cfg.write_text(config_toml)
        cmd += ["-c", str(cfg)]
    cmd += list(args)
    full_env = dict(os.environ)
    # keep the environment predictable: no kernel-cmdline fallback from the host's AA_KBC_PARAMS
    full_env.pop("AA_KBC_PARAMS", None)
    full_env.update(env or {})
    log_path = workdir / "aa.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    return AaProcess(proc, sock, log_path, sock_dir)


def wait_for_socket(aa: AaProcess, timeout: float = 15.0) -> None:
    """Wait until the socket accepts a connection: the file appears when the
    socket is bound, a moment before the AA listens on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if aa.socket_path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(aa.socket_path))
                    return
                except OSError:
                    pass
        if aa.proc.poll() is not None:
            raise RuntimeError(f"attestation-agent exited with {aa.proc.returncode}:\n{aa.log()}")
        time.sleep(0.05)
    aa.stop()
    raise RuntimeError(f"attestation-agent did not create its socket in {timeout} s:\n{aa.log()}")


@contextlib.contextmanager
def start_aa(
    workdir: Path,
    *,
    config_toml: str | None = None,
    kbs_url: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> Iterator[AaProcess]:
    """Run ``attestation-agent`` on ``workdir/aa.sock`` for the ``with`` block.
    ``kbs_url`` writes a minimal aa.toml (``[token_configs.kbs] url``);
    ``config_toml`` gives the whole file instead."""
    aa = launch_aa(workdir, config_toml=config_toml, kbs_url=kbs_url, args=args, env=env)
    try:
        wait_for_socket(aa, timeout)
        yield aa
    finally:
        aa.stop()
