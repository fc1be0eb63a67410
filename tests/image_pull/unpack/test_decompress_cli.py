"""Decompression (gzip multi-member, zstd multi-frame, plain) and the unpack-layer CLI."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import zstandard

from image_pull.unpack import (
    DecompressError,
    UnsupportedEntry,
    codec_for_media_type,
    open_decompressed,
    read_ahead,
)

from .tarbuild import Tar

PAYLOAD = os.urandom(300_000) + bytes(500_000)


def gzip_members(data: bytes, parts: int) -> bytes:
    step = len(data) // parts + 1
    return b"".join(gzip.compress(data[i : i + step]) for i in range(0, len(data), step))


def zstd_frames(data: bytes, parts: int) -> bytes:
    c = zstandard.ZstdCompressor()
    step = len(data) // parts + 1
    return b"".join(c.compress(data[i : i + step]) for i in range(0, len(data), step))


def read_all(stream: io.RawIOBase | object, n: int = 65536) -> bytes:
    out = []
    while chunk := stream.read(n):  # type: ignore[attr-defined]
        assert len(chunk) <= n
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize(
    "blob, media_type",
    [
        (gzip.compress(PAYLOAD), "application/vnd.oci.image.layer.v1.tar+gzip"),
        (gzip_members(PAYLOAD, 3), "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        (gzip_members(PAYLOAD, 3) + bytes(100), None),  # zero padding after the last member
        (zstd_frames(PAYLOAD, 1), "application/vnd.oci.image.layer.v1.tar+zstd"),
        (zstd_frames(PAYLOAD, 4), None),
        (PAYLOAD, "application/vnd.oci.image.layer.v1.tar"),
        (PAYLOAD, None),
    ],
)
def test_codecs(blob: bytes, media_type: str | None) -> None:
    assert read_all(open_decompressed(io.BytesIO(blob), media_type)) == PAYLOAD


def test_read_never_exceeds_request_on_a_bomb() -> None:
    bomb = gzip.compress(bytes(50 << 20))
    s = open_decompressed(io.BytesIO(bomb))
    assert len(s.read(4096)) == 4096


@pytest.mark.parametrize(
    "blob, match",
    [
        (gzip.compress(PAYLOAD)[:-20], "truncated"),
        (gzip.compress(PAYLOAD) + b"garbage", "trailing data"),
        (b"\x1f\x8b\x08\x00" + os.urandom(64), "corrupt gzip"),
        (zstd_frames(PAYLOAD, 1)[:-10], "zstd"),
        (b"BZh91AY&SY", "bzip2/xz"),
    ],
)
def test_corrupt_streams(blob: bytes, match: str) -> None:
    with pytest.raises(DecompressError, match=match):
        read_all(open_decompressed(io.BytesIO(blob)))


def test_media_types() -> None:
    assert codec_for_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") == "zstd"
    with pytest.raises(UnsupportedEntry, match="encrypted"):
        codec_for_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    with pytest.raises(UnsupportedEntry, match="unsupported"):
        codec_for_media_type("application/vnd.oci.image.config.v1+json")
    assert zlib  # (zlib is what the gzip reader builds on)


def coco_image(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("coco-image")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("codec", ["plain", "gzip", "zstd"])
def test_cli_unpacks_every_codec(tmp_path: Path, codec: str) -> None:
    tar = bytes(Tar().dir("d").file("d/f", b"content").file("d/.wh.old"))
    blob = {"plain": tar, "gzip": gzip.compress(tar), "zstd": zstandard.ZstdCompressor().compress(tar)}[codec]
    (tmp_path / "layer").write_bytes(blob)
    cp = coco_image("unpack-layer", "-v", str(tmp_path / "layer"), str(tmp_path / "out"))
    assert cp.returncode == 0, cp.stderr
    assert "3 entries" in cp.stdout
    assert (tmp_path / "out/d/f").read_bytes() == b"content"


def test_cli_media_type_flatten_and_errors(tmp_path: Path) -> None:
    (tmp_path / "out/d").mkdir(parents=True)
    (tmp_path / "out/d/old").write_text("lower")
    tar = bytes(Tar().file("d/.wh.old"))
    (tmp_path / "layer").write_bytes(gzip.compress(tar))
    cp = coco_image(
        "unpack-layer",
        "--flatten",
        "--media-type",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        str(tmp_path / "layer"),
        str(tmp_path / "out"),
    )
    assert cp.returncode == 0, cp.stderr
    assert not (tmp_path / "out/d/old").exists()
    (tmp_path / "bad").write_bytes(bytes(Tar().file("f").file("f/x")))
    cp = coco_image("unpack-layer", str(tmp_path / "bad"), str(tmp_path / "out2"))
    assert cp.returncode == 1
    assert "not a directory" in cp.stderr and "Traceback" not in cp.stderr
    cp = coco_image(
        "unpack-layer", "--media-type", "text/plain", str(tmp_path / "bad"), str(tmp_path / "out3")
    )
    assert cp.returncode == 1 and "unsupported layer media type" in cp.stderr


def test_zstd_truncation_detected_at_every_cut() -> None:
    data = os.urandom(2000) + bytes(70_000) + os.urandom(3000)
    parts = [
        zstandard.ZstdCompressor(write_checksum=True).compress(data[:40_000]),
        b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!",  # skippable frame
        zstandard.ZstdCompressor(write_content_size=False).compress(data[40_000:]),
    ]
    blob = b"".join(parts)
    assert read_all(open_decompressed(io.BytesIO(blob))) == data
    boundaries = {len(parts[0]), len(parts[0]) + len(parts[1]), len(blob)}
    for cut in range(4, len(blob)):
        if cut in boundaries:
            continue
        with pytest.raises(DecompressError):
            read_all(open_decompressed(io.BytesIO(blob[:cut])))


def test_cli_reads_stdin(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("coco-image")
    tar = gzip.compress(bytes(Tar().file("from-stdin", b"s")))
    cp = subprocess.run([str(exe), "unpack-layer", "-", str(tmp_path / "o")], input=tar, capture_output=True)
    assert cp.returncode == 0, cp.stderr
    assert (tmp_path / "o/from-stdin").read_bytes() == b"s"


@pytest.mark.parametrize("blob", [gzip_members(PAYLOAD, 2), zstd_frames(PAYLOAD, 2), PAYLOAD])
def test_threaded_prefetch_yields_the_same_bytes(blob: bytes) -> None:
    with open_decompressed(io.BytesIO(blob), threaded=True) as s:
        assert read_all(s, 100_000) == PAYLOAD


def test_threaded_prefetch_raises_codec_errors_in_the_reader() -> None:
    blob = gzip.compress(PAYLOAD)[:-20]
    with (
        open_decompressed(io.BytesIO(blob), threaded=True) as s,
        pytest.raises(DecompressError, match="truncated"),
    ):
        read_all(s)


def test_threaded_prefetch_stops_on_close() -> None:
    s = open_decompressed(io.BytesIO(gzip.compress(bytes(64 << 20))), threaded=True)
    assert len(s.read(10)) == 10
    s.close()
    thread = s._thread  # type: ignore[attr-defined]
    thread.join(timeout=5)
    assert not thread.is_alive()


class _SlowCounting(io.RawIOBase):
    """Counts reads, each a little slow, so the helper is inside one when close() comes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.active = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.active += 1
        try:
            time.sleep(0.01)
            return self._data.read(n)
        finally:
            self.active -= 1


def test_read_ahead_close_waits_for_the_helper_to_leave_the_stream() -> None:
    inner = _SlowCounting(bytes(64 << 20))
    ahead = read_ahead(inner)  # type: ignore[arg-type]
    assert len(ahead.read(10)) == 10
    ahead.close()
    assert inner.active == 0  # the caller is the stream's only reader again
    assert not ahead._thread.is_alive()  # type: ignore[attr-defined]


def test_read_ahead_reads_the_whole_stream_through_a_wrapper() -> None:
    import hashlib

    data = os.urandom(3 << 20)
    seen = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def __init__(self) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            chunk = self._src.read(n)
            seen.update(chunk)
            return chunk

    with read_ahead(Hashing()) as ahead:  # type: ignore[arg-type]
        assert read_all(ahead, 77_777) == data
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()
