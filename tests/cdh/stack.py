"""Start the real stack as processes on loopback / temporary Unix sockets:
the reference ``kbs`` (seeded with ``kbs-client``), the ``attestation-agent``
(sample attester) and ``confidential-data-hub``. Used by test_e2e.py and
bench/cdh_get_resource.py. Every process is stopped by :meth:`Stack.close`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent

__all__ = ["Stack", "free_port", "start_stack", "unix_listening", "wait_listening"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unix_listening(path: Path) -> bool:
    """True once something accepts connections on the Unix socket ``path``.

    The socket file appears at bind(), before listen(): a client that takes
    "the file exists" for "the server is up" is refused now and then (seen
    with the AA and CDH processes on a loaded box)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def wait_listening(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not unix_listening(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing accepts connections on {path} after {timeout:.0f}s")
        time.sleep(0.02)


def _wait(cond: object, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if callable(cond) and cond():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-800:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start in {timeout:.0f}s: {log.read_text()[-800:]}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Stack:
    tmp: Path
    kbs_url: str = ""
    aa_sock: Path | None = None
    cdh_sock: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kbs_client(self, *args: str) -> None:
        cp = subprocess.run(
            [str(BIN / "kbs-client"), "--url", self.kbs_url, "config", *args], capture_output=True, timeout=60
        )
        if cp.returncode != 0:
            raise RuntimeError(f"kbs-client {' '.join(args[:2])}: {cp.stderr.decode()[-400:]}")

    def set_resource(self, path: str, value: bytes) -> None:
        f = self.tmp / f"res-{path.replace('/', '_')}"
        f.write_bytes(value)
        self.kbs_client("set-resource", "--path", path, "--resource-file", str(f))

    def start_kbs(self) -> None:
        port = free_port()
        cfg = self.tmp / "kbs-config.toml"
        cfg.write_text(
            f'[http_server]\nsockets = ["127.0.0.1:{port}"]\ninsecure_http = true\n\n'
            '[admin]\nauthorization_mode = "InsecureAllowAll"\n\n'
            "[attestation_token]\n\n"
            '[attestation_service]\ntype = "coco_as_builtin"\n\n'
            '[storage_backend]\nstorage_type = "LocalFs"\n[storage_backend.backends.local_fs]\n'
            f'dir_path = "{self.tmp / "kbs-storage"}"\n\n[[plugins]]\nname = "resource"\n'
            '\n[security]\ndev_verifiers = ["sample"]\n'  # the stack attests with the sample TEE
        )
        log = self.tmp / "kbs.log"
        p = subprocess.Popen(
            [str(BIN / "kbs"), "--config-file", str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.procs.append(p)
        _wait(lambda: _port_open(port), p, "kbs", log)
        self.kbs_url = f"http://127.0.0.1:{port}"
        self.kbs_client("set-resource-policy", "--allow-all")

    def start_aa(self) -> None:
        self.aa_sock = self.tmp / "aa.sock"
        (self.tmp / "aa.toml").write_text(f'[token_configs.kbs]\nurl = "{self.kbs_url}"\n')
        log = self.tmp / "aa.log"
        p = subprocess.Popen(
            [
                str(BIN / "attestation-agent"),
                "--attestation_sock",
                f"unix://{self.aa_sock}",
                "-c",
                str(self.tmp / "aa.toml"),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        sock = self.aa_sock
        _wait(lambda: unix_listening(sock), p, "attestation-agent", log)

    def start_cdh(self, extra_toml: str = "") -> None:
        self.cdh_sock = self.tmp / "cdh.sock"
        cfg = self.tmp / "cdh.toml"
        cfg.write_text(
            f'socket = "unix://{self.cdh_sock}"\n[aa]\naa_socket = "unix://{self.aa_sock}"\n'
            f'[kbc]\nname = "cc_kbc"\nurl = "{self.kbs_url}"\n{extra_toml}'
        )
        env = {
            k: v for k, v in os.environ.items() if k not in ("AA_KBC_PARAMS", "OCICRYPT_KEYPROVIDER_CONFIG")
        }
        env["OCICRYPT_KEYPROVIDER_CONFIG"] = str(self.tmp / "ocicrypt.json")
        log = self.tmp / "cdh.log"
        p = subprocess.Popen(
            [str(BIN / "confidential-data-hub"), "-c", str(cfg)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(p)
        sock = self.cdh_sock
        _wait(lambda: unix_listening(sock), p, "confidential-data-hub", log)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


@contextlib.contextmanager
def start_stack(tmp: Path, *, cdh: bool = True) -> Iterator[Stack]:
    s = Stack(tmp)
    try:
        s.start_kbs()
        s.start_aa()
        if cdh:
            s.start_cdh()
        yield s
    finally:
        s.close()
