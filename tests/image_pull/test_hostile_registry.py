"""`coco-image pull` against a hostile registry (tests/support/hostile_registry.py).

Each case is one finding of the adversarial review of the puller: HTTP
content-coding bombs (every body: manifest, blob, token, error), bodies cut or
stalled mid-way, trickling registries, layer bombs, sparse files in a copied
rootfs. The pull runs as the real CLI in a child process; its peak RSS
(``wait4``'s ``ru_maxrss``, the child and the workers it waited for) must stay
under :data:`RSS_CAP`, and failures must be one typed line, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from image_pull.errors import InsufficientSpace, RegistryError, TransferError
from image_pull.puller import ImagePuller, PullerConfig
from image_pull.registries_conf import RegistryConfig
from image_pull.registry import RetryPolicy
from tests.support.hostile_registry import HostileRegistry, small_layer, wait_until

RSS_CAP = 200 << 20
BOMB = 256 << 20  # decoded size of every bomb: far above each limit, and above RSS_CAP


def _deflate_stream(chunks: Iterator[bytes], wbits: int) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = io.BytesIO()
    for c in chunks:
        out.write(co.compress(c))
    out.write(co.flush())
    return out.getvalue()


def _zeros(n: int) -> Iterator[bytes]:
    block = bytes(1 << 20)
    for _ in range(n >> 20):
        yield block


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    gz = _deflate_stream(_zeros(BOMB), 16 + zlib.MAX_WBITS)
    cctx = zstandard.ZstdCompressor(level=3)
    zo = cctx.compressobj()
    zs = b"".join([*(zo.compress(c) for c in _zeros(BOMB)), zo.flush()])
    return {
        "gzip": gz,
        "gzip, gzip": gzip.compress(gz, mtime=0),
        "zstd": zs,
        "zstd, gzip": gzip.compress(zs, mtime=0),
    }


@pytest.fixture
def reg() -> Iterator[HostileRegistry]:
    r = HostileRegistry()
    yield r
    r.stop()


# Started from this (large) test process, a child's ru_maxrss would start at our
# RSS (Linux carries the high-water mark over fork+exec); a small launcher
# process forks the pull instead and reports the pull's own peak.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def cli_pull(reg: HostileRegistry, tmp: Path, *extra: str, timeout: float = 120) -> tuple[int, str, int]:
    """Run ``coco-image pull``; (exit status, stderr, peak RSS in bytes of the
    puller and of its largest worker)."""
    args = ["-m", "image_pull.cli", "pull", reg.ref, "--plain-http", reg.host,
            "--work-dir", str(tmp / "work"), "--bundle", str(tmp / "bundle"), "--snapshotter", "copy",
            *extra]  # fmt: skip
    rss_file = tmp / "maxrss"
    cp = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(rss_file), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    return cp.returncode, cp.stderr.decode(errors="replace"), int(rss_file.read_text())


FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, low_speed_limit=100, low_speed_time=0.5)


async def inproc_pull(reg: HostileRegistry, tmp: Path, **cfg: Any) -> None:
    """The pull in this process (no CLI start-up, fast retries): for cases that need no RSS figure."""
    config = PullerConfig(
        work_dir=tmp / "work",
        insecure_registries=frozenset({reg.host}),
        snapshotter="copy",
        unpack_workers="thread",
        retry=cfg.pop("retry", FAST),
        **cfg,
    )
    async with ImagePuller(config) as p:
        await p.pull(reg.ref, tmp / "bundle")


def assert_one_line_failure(rc: int, stderr: str, *needles: str) -> None:
    assert rc == 1, stderr
    assert "Traceback" not in stderr, stderr
    # the no---policy WARNING comes first; the failure itself is one line
    lines = [
        ln
        for ln in stderr.splitlines()
        if ln.startswith("coco-image pull:") and not ln.startswith("coco-image pull: WARNING: no --policy")
    ]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], stderr


# ---------------------------------------------------------------------- F1: content-coding bombs
@pytest.mark.parametrize("coding", ["zstd", "gzip", "gzip, gzip", "zstd, gzip"])
def test_manifest_with_a_content_coding_is_refused_before_decoding(
    reg: HostileRegistry, bombs: dict[str, bytes], tmp_path: Path, coding: str
) -> None:
    reg.fault("manifest", "encoding", coding=coding, body=bombs[coding])
    rc, err, rss = cli_pull(reg, tmp_path)
    assert_one_line_failure(rc, err, "Content-Encoding")
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"
    assert all(r.headers.get("accept-encoding") == "identity" for r in reg.requests)


@pytest.mark.parametrize("where", ["layer", "config"])
def test_blob_with_a_content_coding_is_refused(
    reg: HostileRegistry, bombs: dict[str, bytes], tmp_path: Path, where: str
) -> None:
    reg.fault(where, "encoding", coding="zstd", body=bombs["zstd"])
    rc, err, rss = cli_pull(reg, tmp_path)
    assert_one_line_failure(rc, err, "Content-Encoding")
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"
    assert not any((tmp_path / "work" / "layers").iterdir())


@pytest.mark.parametrize("coding", ["gzip", "gzip, gzip", "zstd"])
def test_token_response_bomb_stops_at_its_limit(bombs: dict[str, bytes], tmp_path: Path, coding: str) -> None:
    reg = HostileRegistry(token_auth=True)
    try:
        reg.fault("token", "encoding", coding=coding, body=bombs[coding])
        rc, err, rss = cli_pull(reg, tmp_path)
    finally:
        reg.stop()
    assert_one_line_failure(rc, err, "token")
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"


def test_error_body_bomb_is_bounded(reg: HostileRegistry, bombs: dict[str, bytes], tmp_path: Path) -> None:
    reg.fault(
        "manifest",
        "status",
        status=404,  # not retried: the error body is read for its message
        body=bombs["gzip, gzip"],
        headers={"Content-Encoding": "gzip, gzip", "Content-Type": "application/json"},
    )
    rc, err, rss = cli_pull(reg, tmp_path)
    assert_one_line_failure(rc, err, "HTTP 404")
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"


# ---------------------------------------------------------------------- F2: transport faults mid-body
@pytest.mark.parametrize("where", ["manifest", "token", "config"])
def test_a_body_cut_once_is_retried(tmp_path: Path, where: str) -> None:
    reg = HostileRegistry(token_auth=where == "token")
    try:
        reg.fault(where, "short", times=1, extra=0 if where == "config" else 1000)
        rc, err, _ = cli_pull(reg, tmp_path)
    finally:
        reg.stop()
    assert rc == 0, err
    assert (tmp_path / "bundle" / "rootfs" / "hello").read_bytes().startswith(b"hello")


@pytest.mark.parametrize("where", ["manifest", "config"])
def test_corrupt_gzip_coding_is_one_typed_line(reg: HostileRegistry, tmp_path: Path, where: str) -> None:
    reg.fault(where, "encoding", coding="gzip", body=b"\x1f\x8b\x08\x00garbage-not-deflate" * 10)
    rc, err, _ = cli_pull(reg, tmp_path)
    assert_one_line_failure(rc, err, "Content-Encoding")


async def test_a_body_cut_every_time_is_a_typed_error(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("manifest", "short")
    with pytest.raises(TransferError, match="RemoteProtocolError"):
        await inproc_pull(reg, tmp_path)
    assert reg.count("manifest") == 1 + FAST.attempts  # the HEAD, then every try of the GET


async def test_a_mirror_that_cuts_its_manifest_body_falls_back(reg: HostileRegistry, tmp_path: Path) -> None:
    mirror = HostileRegistry()
    try:
        mirror.fault("manifest", "short")
        conf = RegistryConfig.from_toml(
            f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'.encode()
        )
        await inproc_pull(reg, tmp_path, registry_config=conf)
    finally:
        mirror.stop()
    assert mirror.count("manifest") >= 1
    assert (tmp_path / "bundle" / "rootfs" / "hello").exists()


# ---------------------------------------------------------------------- F4: time bounds
async def test_a_trickled_manifest_fails_on_the_low_speed_limit(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("manifest", "trickle", interval=0.5)
    with pytest.raises(TransferError, match="bytes/s"):
        await inproc_pull(reg, tmp_path)


async def test_a_stalled_layer_resumes_then_fails_typed(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("layer", "stall", after=10, hold=60)
    with pytest.raises(RegistryError, match="blob"):
        await inproc_pull(reg, tmp_path)
    assert any("range" in r.headers for r in reg.requests)  # it resumed before giving up
    assert not any((tmp_path / "work" / "staging").iterdir())


def test_the_cli_has_the_low_speed_limit(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("manifest", "trickle", interval=0.5, times=1)
    rc, err, _ = cli_pull(reg, tmp_path, "--low-speed-limit", "100", "--low-speed-time", "1")
    assert rc == 0, err  # the trickled GET failed on the limit, the retry succeeded
    assert reg.count("manifest") == 3


def test_trickled_headers_hit_the_default_deadline_not_forever(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("manifest", "stall", after=0, hold=60)
    rc, err, _ = cli_pull(reg, tmp_path, "--timeout", "3")
    assert_one_line_failure(rc, err, "did not finish within 3")


def test_retry_after_is_capped(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.fault("manifest", "retry_after", value=3600)
    rc, err, _ = cli_pull(reg, tmp_path, "--timeout", "30")
    assert_one_line_failure(rc, err, "HTTP 503")
    assert reg.count("manifest") <= 2  # HEAD + GET, neither slept an hour


def test_cli_and_puller_have_a_default_deadline() -> None:
    from image_pull.puller import DEFAULT_PULL_TIMEOUT, PullerConfig

    assert PullerConfig(work_dir=Path("/nonexistent")).pull_timeout == DEFAULT_PULL_TIMEOUT
    assert DEFAULT_PULL_TIMEOUT is not None and DEFAULT_PULL_TIMEOUT > 0


# ---------------------------------------------------------------------- F3: disk bounded by what is written
def bomb_layer_tar(size: int) -> bytes:
    """A layer tar holding one file of ``size`` zero bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("bomb.bin")
        ti.size = size
        tf.addfile(ti, io.BytesIO(bytes(size)))
    return buf.getvalue()


class DiskWatch:
    """Samples the bytes allocated under a directory while a pull runs (peak kept)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _used(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._used())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, self._used())


def test_gzip_bomb_stops_at_the_pull_budget(tmp_path: Path) -> None:
    tar = bomb_layer_tar(BOMB)
    reg = HostileRegistry(layer_tar=tar)  # an honest descriptor: gzip's ratio stays under 1100x
    budget = 48 << 20
    (tmp_path / "work").mkdir()
    watch = DiskWatch(tmp_path)
    try:
        rc, err, rss = cli_pull(reg, tmp_path, "--max-unpacked-bytes", str(budget))
    finally:
        peak = watch.stop()
        reg.stop()
    assert_one_line_failure(rc, err, "budget")
    assert peak <= budget + (1 << 20), f"peak disk {peak >> 20} MiB"  # a MiB of metadata blocks
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"
    assert not any((tmp_path / "work" / "staging").iterdir())
    assert not any((tmp_path / "work" / "layers").iterdir())


async def test_budget_holds_with_unpack_threads(tmp_path: Path) -> None:
    reg = HostileRegistry(layer_tar=bomb_layer_tar(64 << 20))
    try:
        with pytest.raises(InsufficientSpace, match="budget of 16777216"):
            await inproc_pull(reg, tmp_path, max_unpacked_bytes=16 << 20)
    finally:
        reg.stop()
    assert not any((tmp_path / "work" / "staging").iterdir())


def test_expansion_ratio_counts_bytes_received_not_the_declared_size(tmp_path: Path) -> None:
    tar = bomb_layer_tar(BOMB)
    cctx = zstandard.ZstdCompressor(level=19)
    blob = cctx.compress(tar)
    # the descriptor claims 1 GB, the registry sends a few KB and keeps the connection open
    reg = HostileRegistry(
        layer_tar=tar,
        layer_blob=blob,
        layer_media_type="application/vnd.oci.image.layer.v1.tar+zstd",
        declared_size=1 << 30,
        hold_after_layer=True,
    )
    (tmp_path / "work").mkdir()
    watch = DiskWatch(tmp_path)
    try:
        rc, err, rss = cli_pull(reg, tmp_path, "--timeout", "60")
    finally:
        peak = watch.stop()
        reg.stop()
    assert_one_line_failure(rc, err, "compressed bytes sent")
    limit = int(1100 * len(blob)) + (1 << 20)
    assert peak <= limit + (16 << 20), f"peak disk {peak >> 20} MiB for {len(blob)} bytes received"
    assert rss < RSS_CAP, f"peak RSS {rss >> 20} MiB"


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_copy_snapshotter_keeps_sparse_files_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    apparent = 1 << 30
    with open(src / "sparse.img", "wb") as f:
        f.truncate(apparent)
        f.seek(apparent // 2)
        f.write(b"data in the middle")
    tar = subprocess.run(
        ["tar", "--sparse", "--format=posix", "-C", str(src), "-cf", "-", "sparse.img"],
        capture_output=True,
        check=True,
    ).stdout
    reg = HostileRegistry(layer_tar=tar)
    try:
        rc, err, _ = cli_pull(reg, tmp_path)  # cli_pull uses --snapshotter copy
    finally:
        reg.stop()
    assert rc == 0, err
    out = tmp_path / "bundle" / "rootfs" / "sparse.img"
    st = out.stat()
    assert st.st_size == apparent
    assert st.st_blocks * 512 < 1 << 20, f"{st.st_blocks * 512} bytes allocated for a sparse file"
    with open(out, "rb") as f:
        f.seek(apparent // 2)
        assert f.read(18) == b"data in the middle"


# ---------------------------------------------------------------------- F7: kill -9 in the bundle step
def _many_files_tar(n: int) -> bytes:
    return small_layer({f"d{i % 50}/f{i}": os.urandom(512) for i in range(n)})


def _kill_during_copy(reg: HostileRegistry, tmp: Path) -> None:
    """Start a copy-mode pull; SIGKILL it while the flattened copy is being written."""
    cmd = [sys.executable, "-m", "image_pull.cli", "pull", reg.ref, "--plain-http", reg.host,
           "--work-dir", str(tmp / "work"), "--bundle", str(tmp / "bundle"), "--snapshotter", "copy"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = wait_until(lambda: any((tmp / "bundle").glob(".rootfs.*/d*")), timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert seen, "the pull never reached the copy step"


@pytest.mark.slow
def test_kill_9_mid_copy_leaves_nothing_a_later_pull_or_gc_does_not_remove(tmp_path: Path) -> None:
    from image_pull.store import LayerStore

    reg = HostileRegistry(layer_tar=_many_files_tar(6000))
    try:
        # the GC finds the partial copy through the store's record of it
        _kill_during_copy(reg, tmp_path)
        assert list((tmp_path / "bundle").glob(".rootfs.*"))
        LayerStore(tmp_path / "work").gc()
        assert not list((tmp_path / "bundle").glob(".rootfs.*"))
        assert not list((tmp_path / "work" / "bundles").iterdir())
        # the next pull into the bundle removes it too
        _kill_during_copy(reg, tmp_path)
        assert list((tmp_path / "bundle").glob(".rootfs.*"))
        shutil.rmtree(tmp_path / "bundle" / "rootfs", ignore_errors=True)
        rc, err, _ = cli_pull(reg, tmp_path)
    finally:
        reg.stop()
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["config.json", "rootfs"]
    assert (tmp_path / "bundle" / "rootfs" / "d7" / "f7").stat().st_size == 512


# ---------------------------------------------------------------------- F8: out of inodes
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs with few inodes")
def test_out_of_inodes_is_insufficient_space_and_leaves_no_staging(tmp_path: Path) -> None:
    """The work dir runs out of inodes at every step of the pull in turn (k inodes left)."""
    from image_pull.store import LayerStore

    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=64", "tmpfs", str(work)], check=True)
    reg = HostileRegistry()
    messages = []
    try:
        for k in range(10):
            for p in list(work.iterdir()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
            LayerStore(work)  # its directories
            fillers = []
            with contextlib.suppress(OSError):
                while len(fillers) < 1000:
                    f = work / f"filler{len(fillers)}"
                    f.touch()
                    fillers.append(f)
            for f in fillers[:k]:
                f.unlink()
            try:
                asyncio.run(inproc_pull(reg, tmp_path))
            except InsufficientSpace as exc:  # typed; anything else fails the test
                assert "\n" not in str(exc)
                messages.append(str(exc))
            assert not list((work / "staging").iterdir()), f"staging left with {k} inodes free"
    finally:
        reg.stop()
        subprocess.run(["umount", "-l", str(work)], check=False)
    assert any("no free inodes" in m for m in messages), messages  # the staging dir's mkdir was hit


# ---------------------------------------------------------------------- F9: what the logs show
def test_verbose_logs_do_not_show_the_registry_username(tmp_path: Path) -> None:
    reg = HostileRegistry(token_auth=True)
    auth = tmp_path / "auth.json"
    secret_user = "alice-the-account-name"
    cred = base64.b64encode(f"{secret_user}:pw-not-shown".encode()).decode()
    auth.write_text(json.dumps({"auths": {reg.host: {"auth": cred}}}))
    try:
        rc, err, _ = cli_pull(reg, tmp_path, "-v", "--auth-file", str(auth))
    finally:
        reg.stop()
    assert rc == 0, err
    token_reqs = [r for r in reg.requests if r.path.startswith("/token")]
    assert token_reqs and f"account={secret_user}" in token_reqs[0].path  # sent to the realm...
    assert "token" in err and secret_user not in err  # ...but never logged
    assert "pw-not-shown" not in err
