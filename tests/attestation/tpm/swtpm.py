"""A real software TPM for tests: Debian's swtpm on a Unix socket in a fresh
state directory, plus tpm2-tools (an independent TSS) to provision it the way
a platform would (persistent attestation key, NV indices)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

AK_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"


def require_swtpm() -> None:
    for tool in ("swtpm", "tpm2_createprimary", "tpm2_evictcontrol", "tpm2_nvdefine", "tpm2_nvwrite"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-deps.sh installs swtpm and tpm2-tools)")


@dataclass
class Swtpm:
    dir: Path
    sock: Path

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"

    def tools(self, *args: str, stdin: bytes | None = None) -> bytes:
        env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={self.sock}")
        res = subprocess.run(
            args, env=env, input=stdin, capture_output=True, timeout=30, check=False, cwd=self.dir
        )
        if res.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {res.stderr.decode(errors='replace')[-500:]}")
        return res.stdout

    def persist_ak(self, handle: int, alg: str = "rsa2048:rsassa-sha256:null") -> None:
        """A restricted signing key (an AK) created under the owner hierarchy and made persistent."""
        ctx = f"ak-{handle:x}.ctx"
        self.tools("tpm2_createprimary", "-C", "o", "-G", alg, "-a", AK_ATTRS, "-c", ctx)
        self.tools("tpm2_evictcontrol", "-C", "o", "-c", ctx, f"{handle:#x}")
        self.tools("tpm2_flushcontext", "-t")

    def nv_store(self, index: int, data: bytes) -> None:
        self.tools(
            "tpm2_nvdefine", f"{index:#x}", "-C", "o", "-s", str(len(data)), "-a", "ownerread|ownerwrite"
        )
        path = self.dir / f"nv-{index:x}.bin"
        path.write_bytes(data)
        self.tools("tpm2_nvwrite", f"{index:#x}", "-C", "o", "-i", str(path))

    def nv_read(self, index: int) -> bytes:
        return self.tools("tpm2_nvread", f"{index:#x}", "-C", "o")

    def pcr(self, index: int) -> bytes:
        path = self.dir / "pcr.bin"
        self.tools("tpm2_pcrread", f"sha256:{index}", "-o", str(path))
        return path.read_bytes()


@contextmanager
def running_swtpm() -> Iterator[Swtpm]:
    require_swtpm()
    d = Path(tempfile.mkdtemp(prefix="swtpm"))  # short: Unix socket paths are limited to 107 bytes
    sock = d / "sock"
    proc = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d}",
            "--server", f"type=unixio,path={sock}",
            "--ctrl", f"type=unixio,path={sock}.ctrl",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if sock.exists() and Path(f"{sock}.ctrl").exists():
                break
            if proc.poll() is not None:
                raise AssertionError(f"swtpm exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.02)
        yield Swtpm(d, sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
