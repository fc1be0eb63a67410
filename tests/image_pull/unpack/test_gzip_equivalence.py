"""The layer gunzip on zlib-ng behaves exactly as it did on the stdlib's zlib.

The same reader runs over the same bytes twice, once on zlib-ng (what ships) and once
with the stdlib's zlib put in its place (what shipped before), for every truncation
point and every single-bit flip of a multi-member stream whose members carry every
optional header field (FEXTRA, FNAME, FCOMMENT, FHCRC), a stored block and fixed
Huffman codes, and for padding and garbage after the last member. Both must return
the same bytes or fail with the same kind of error; reads never exceed the request.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import zlib
from collections.abc import Iterator

import pytest

from image_pull.unpack import DecompressError, decompress, open_decompressed

PAYLOAD = b"".join(b"line %05d of the layer\n" % i for i in range(120)) + bytes(range(256))


def _member(
    data: bytes, *, level: int = 6, strategy: int = zlib.Z_DEFAULT_STRATEGY, full: bool = False
) -> bytes:
    """One RFC 1952 member; ``full`` sets FEXTRA, FNAME, FCOMMENT and FHCRC."""
    flags = 0x04 | 0x08 | 0x10 | 0x02 if full else 0
    header = b"\x1f\x8b\x08" + bytes([flags]) + struct.pack("<I", 1_700_000_000) + b"\x00\x03"
    if full:
        header += struct.pack("<H", 6) + b"AB\x02\x00xy" + b"layer.tar\x00" + b"a comment\x00"
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    co = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy)
    body = co.compress(data) + co.flush()
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


THIRD = len(PAYLOAD) // 3
STREAM = (
    _member(PAYLOAD[:THIRD], full=True)
    + _member(PAYLOAD[THIRD : 2 * THIRD], level=0)  # stored blocks
    + _member(PAYLOAD[2 * THIRD :], strategy=zlib.Z_FIXED)
)


class _Trickle(io.RawIOBase):
    """Hands out the bytes a few at a time, so headers and trailers straddle reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = data
        self._pos = 0
        self._step = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self._step = self._step % 13 + 1
        n = self._step if size is None or size < 0 else min(size, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


@contextlib.contextmanager
def _stdlib_zlib() -> Iterator[None]:
    """Put the stdlib's zlib where the reader looks for its inflater (what shipped before)."""
    saved = decompress.zlib_ng, decompress._ZlibError
    decompress.zlib_ng, decompress._ZlibError = zlib, zlib.error  # type: ignore[assignment]
    try:
        yield
    finally:
        decompress.zlib_ng, decompress._ZlibError = saved


def _outcome(blob: bytes, trickle: bool) -> tuple[bytes, str | None]:
    """(all bytes read, the error's kind or None); every read is bounded by its request."""
    raw = _Trickle(blob) if trickle else io.BytesIO(blob)
    stream = open_decompressed(raw, "application/vnd.oci.image.layer.v1.tar+gzip")  # type: ignore[arg-type]
    out = bytearray()
    try:
        while chunk := stream.read(997):
            assert len(chunk) <= 997
            out += chunk
    except DecompressError as exc:
        return bytes(out), str(exc).split(":")[0]
    return bytes(out), None


def _both(blob: bytes, trickle: bool = False) -> tuple[tuple[bytes, str | None], tuple[bytes, str | None]]:
    ng = _outcome(blob, trickle)
    with _stdlib_zlib():
        std = _outcome(blob, trickle)
    return ng, std


def _same(blob: bytes, trickle: bool = False) -> tuple[bytes, str | None]:
    ng, std = _both(blob, trickle)
    assert ng[1] == std[1], (ng[1], std[1])
    if ng[1] is None:
        assert ng[0] == std[0]
    return ng


def test_the_reader_really_runs_on_zlib_ng_and_the_swap_takes() -> None:
    assert decompress.zlib_ng.__name__ == "zlib_ng.zlib_ng"
    with _stdlib_zlib():
        assert decompress.zlib_ng is zlib
    assert decompress.zlib_ng is not zlib


@pytest.mark.parametrize("trickle", [False, True])
def test_multi_member_stream_with_every_header_field(trickle: bool) -> None:
    assert gzip.decompress(STREAM) == PAYLOAD  # an independent reader agrees on the input
    assert _same(STREAM, trickle) == (PAYLOAD, None)


@pytest.mark.parametrize(
    "tail, kind",
    [
        (bytes(37), None),  # zero padding after the last member
        (bytes(3) + _member(b"more"), None),  # padding between members
        (b"garbage", "trailing data after the gzip stream"),
        (bytes(5) + b"\x1f", "gzip stream is truncated"),  # a member that never starts
        (b"\x1f\x8b", "gzip stream is truncated"),
        (b"\x1f\x8b\x07\x00" + bytes(6), "corrupt gzip stream"),  # unknown method
    ],
)
def test_what_follows_the_last_member(tail: bytes, kind: str | None) -> None:
    for trickle in (False, True):
        out, got = _same(STREAM + tail, trickle)
        assert got == kind
        if kind is None:
            assert out == PAYLOAD + (b"more" if tail.endswith(_member(b"more")) else b"")


def test_every_truncation_fails_the_same_way() -> None:
    kinds: set[str | None] = set()
    for cut in range(1, len(STREAM)):
        out, kind = _same(STREAM[:cut], trickle=cut % 2 == 0)
        kinds.add(kind)
        # a cut on a member boundary is a shorter valid stream; anything else must fail
        assert kind is not None or PAYLOAD.startswith(out)
    assert "gzip stream is truncated" in kinds


def test_every_bit_flip_fails_or_decodes_the_same_way() -> None:
    kinds: set[str | None] = set()
    for pos in range(len(STREAM)):
        for bit in (0x01, 0x80):
            blob = bytearray(STREAM)
            blob[pos] ^= bit
            _out, kind = _same(bytes(blob), trickle=pos % 3 == 0)
            kinds.add(kind)
    # header CRC, trailer CRC/ISIZE, bad codes: all caught as corrupt by both
    assert "corrupt gzip stream" in kinds


@pytest.mark.parametrize("field", ["crc", "isize"])
def test_trailer_checks(field: str) -> None:
    last = _member(b"tail data")
    crc, size = struct.unpack("<II", last[-8:])
    bad = last[:-8] + (
        struct.pack("<II", crc ^ 1, size) if field == "crc" else struct.pack("<II", crc, size + 1)
    )
    for trickle in (False, True):
        assert _same(STREAM + bad, trickle)[1] == "corrupt gzip stream"
