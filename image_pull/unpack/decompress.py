"""Streaming decompression of layer blobs: gzip (multi-member), zstd (multi-frame), plain.

gzip is inflated by zlib-ng (a dependency: about twice the speed of the stdlib's zlib
on layer data, with the same ``decompressobj`` semantics: trailer CRC-32/ISIZE checks,
``eof``/``unused_data`` at the member end, ``max_length`` bounding each output).

Every codec is wrapped in a read-only, non-seeking stream whose ``read(n)``
never returns more than ``n`` bytes, so a small compressed input cannot force
a large allocation; codec errors surface as :class:`DecompressError`.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any, BinaryIO, cast

from zlib_ng import zlib_ng

from .errors import DecompressError, UnsupportedEntry

__all__ = ["MEDIA_TYPE_CODECS", "codec_for_media_type", "open_decompressed", "read_ahead"]

_RAW_CHUNK = 256 * 1024
_CLOSE_WAIT = 5.0  # seconds: a helper stuck in a read is a daemon thread and dies with the process
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_WBITS = 16 + 15  # gzip wrapper, 32 KiB window
# the stub declares ``error`` as an instance; it is the module's exception class
_ZlibError = cast(type[Exception], zlib_ng.error)

MEDIA_TYPE_CODECS: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


def codec_for_media_type(media_type: str) -> str:
    """Return ``"none"``, ``"gzip"`` or ``"zstd"`` for a layer media type."""
    codec = MEDIA_TYPE_CODECS.get(media_type)
    if codec is None:
        if media_type.endswith("+encrypted"):
            raise UnsupportedEntry(
                f"layer media type {media_type!r} is encrypted: decrypt it before unpacking"
            )
        raise UnsupportedEntry(f"unsupported layer media type {media_type!r}")
    return codec


class _ReadOnly(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = self.read(1 << 20)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


class _Prefixed(_ReadOnly):
    """A stream with some already-read bytes put back in front of it."""

    def __init__(self, raw: BinaryIO, prefix: bytes) -> None:
        super().__init__()
        self._raw = raw
        self._prefix = prefix

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._prefix:
            out, self._prefix = self._prefix[:size], self._prefix[size:]
            return out
        return self._raw.read(size)


class _GzipStream(_ReadOnly):
    """RFC 1952 gzip, any number of members (zero padding between members is skipped)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._d = zlib_ng.decompressobj(_GZIP_WBITS)
        self._input = b""
        self._member_open = False
        self._finished = False

    def _read_raw(self) -> bytes:
        return self._raw.read(_RAW_CHUNK)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0 or self._finished:
            return b""
        try:
            return self._read(size)
        except _ZlibError as exc:
            raise DecompressError(f"corrupt gzip stream: {exc}") from exc

    def _read(self, size: int) -> bytes:
        while True:
            if self._d.eof:
                leftover = self._d.unused_data + self._input
                self._input = b""
                self._member_open = False
                leftover = leftover.lstrip(b"\x00")
                while not leftover:
                    more = self._read_raw()
                    if not more:
                        self._finished = True
                        return b""
                    leftover = more.lstrip(b"\x00")
                if not leftover.startswith(_GZIP_MAGIC[: len(leftover)]):
                    raise DecompressError("trailing data after the gzip stream")
                self._d = zlib_ng.decompressobj(_GZIP_WBITS)
                self._input = leftover
            if self._d.unconsumed_tail:
                data = self._d.unconsumed_tail
            elif self._input:
                data, self._input = self._input, b""
            else:
                data = self._read_raw()
                if not data:
                    if self._member_open:
                        raise DecompressError("gzip stream is truncated")
                    self._finished = True
                    return b""
            self._member_open = True
            out = self._d.decompress(data, size)
            if out:
                return out


class _ZstdFrames:
    """Walks zstd frame and block headers over the raw bytes (no decompression).

    python-zstandard's stream reader reports a stream cut inside a frame as a
    clean EOF; this walker tells whether the input really ended on a frame
    boundary.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0
        self._state = "magic"
        self._checksum = False
        self.valid = True

    _NEED = {"magic": 4, "skipsize": 4, "fhd": 1, "block": 3}

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while self.valid:
            if self._skip:
                k = min(self._skip, end - pos)
                self._skip -= k
                pos += k
                if self._skip:
                    return
            take = self._NEED[self._state] - len(self._buf)
            if end - pos < take:
                self._buf += data[pos:]
                return
            self._buf += data[pos : pos + take]
            pos += take
            self._advance()

    def _advance(self) -> None:
        buf, self._buf = self._buf, b""
        state = self._state
        if state == "magic":
            if buf == _ZSTD_MAGIC:
                self._state = "fhd"
            elif buf[1:] == b"\x2a\x4d\x18" and buf[0] & 0xF0 == 0x50:
                self._state = "skipsize"
            else:
                self.valid = False
        elif state == "skipsize":
            self._skip = int.from_bytes(buf, "little")
            self._state = "magic"
        elif state == "fhd":
            fhd = buf[0]
            fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
            self._checksum = bool(fhd & 0x04)
            did = (0, 1, 2, 4)[fhd & 0x03]
            fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
            self._skip = (0 if single else 1) + did + fcs
            self._state = "block"
        else:  # block header
            value = int.from_bytes(buf, "little")
            last, btype, size = value & 1, (value >> 1) & 3, value >> 3
            if btype == 3:
                self.valid = False
                return
            self._skip = 1 if btype == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._state = "magic"

    def at_boundary(self) -> bool:
        return self.valid and self._state == "magic" and not self._buf and not self._skip


class _Tee(_ReadOnly):
    def __init__(self, raw: BinaryIO, frames: _ZstdFrames) -> None:
        super().__init__()
        self._raw = raw
        self._frames = frames

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._frames.feed(data)
        return data


class _ZstdStream(_ReadOnly):
    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        import zstandard

        self._error = zstandard.ZstdError
        self._frames = _ZstdFrames()
        source = cast(BinaryIO, _Tee(raw, self._frames))
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=_RAW_CHUNK, read_across_frames=True, closefd=False
        )

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            data: bytes = self._reader.read(size)
        except self._error as exc:
            raise DecompressError(f"corrupt zstd stream: {exc}") from exc
        if not data and size and not self._frames.at_boundary():
            raise DecompressError("zstd stream is truncated")
        return data


class _Prefetched(_ReadOnly):
    """Decompress in a helper thread (zlib-ng and zstd release the GIL) while the caller unpacks.

    At most ``depth`` chunks wait in the queue. Errors from the helper are raised
    by ``read``. ``close()`` stops the helper and waits for it (bounded); it is a
    daemon thread either way.
    """

    def __init__(self, inner: BinaryIO, chunk: int = 1 << 20, depth: int = 4) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(
            target=self._run, args=(inner, chunk), name="layer-decompress", daemon=True
        )
        self._thread.start()

    def _run(self, inner: BinaryIO, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                data = inner.read(chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed over to the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._pos >= len(self._buf):
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            if size >= len(item):
                return item
            self._buf, self._pos = item, 0
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def close(self) -> None:
        """Stop the helper and wait (bounded) for it to leave ``inner``: after close, the
        caller is again its only reader (and writer of anything its reads report)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=_CLOSE_WAIT)
        super().close()


def open_decompressed(stream: BinaryIO, media_type: str | None = None, *, threaded: bool = False) -> BinaryIO:
    """Wrap ``stream`` so that reading it yields the uncompressed tar.

    With ``media_type`` the codec follows the OCI/Docker media type (unknown or
    encrypted types are refused); without it the codec is detected from the
    first bytes (gzip, zstd, otherwise plain tar). With ``threaded`` a helper
    thread reads and decompresses ahead (bounded: 4 MiB) so decompression
    overlaps unpacking; close the returned stream when done.
    """
    plain = _open_codec(stream, media_type)
    return read_ahead(plain) if threaded else plain


def read_ahead(stream: BinaryIO) -> BinaryIO:
    """Read ``stream`` on a helper thread, at most 4 MiB ahead of the caller; close it when done.

    For a stream whose reads are GIL-free C work (zlib, zstd, hashlib, a pipe) wrapped
    around the layer (a decompressor under a digest), so that work overlaps unpacking. The
    helper is the only reader of ``stream`` until the returned stream reports EOF or an
    error (re-raised by ``read``); after EOF the caller may read ``stream`` again.
    """
    return cast(BinaryIO, _Prefetched(stream))


def _open_codec(stream: BinaryIO, media_type: str | None) -> BinaryIO:
    if media_type is not None:
        codec = codec_for_media_type(media_type)
        prefix = b""
    else:
        prefix = b""
        while len(prefix) < 6:
            chunk = stream.read(6 - len(prefix))
            if not chunk:
                break
            prefix += chunk
        if prefix.startswith(_GZIP_MAGIC):
            codec = "gzip"
        elif prefix.startswith(_ZSTD_MAGIC):
            codec = "zstd"
        elif prefix.startswith((b"BZh", b"\xfd7zXZ\x00")):
            raise DecompressError("bzip2/xz compressed layers are not supported by OCI; use gzip or zstd")
        else:
            codec = "none"
    source: BinaryIO = cast(BinaryIO, _Prefixed(stream, prefix)) if prefix else stream
    if codec == "gzip":
        return cast(BinaryIO, _GzipStream(source))
    if codec == "zstd":
        return cast(BinaryIO, _ZstdStream(source))
    return source
