"""Plumbing for the one-pass layer pipeline.

download (event loop) --ChunkPipe--> [decrypt] -> decompress -> HashingReader(diff_id) -> unpack (thread)

* :class:`ChunkPipe` moves bytes from the event loop to a worker thread with a
  bounded buffer (backpressure both ways, no layer ever held in memory).
* :class:`HashingReader` hashes and counts what the unpacker reads and enforces
  the uncompressed-size limit and the expansion ratio against the compressed
  bytes actually received (:class:`CountingReader`), never a declared size;
  it reports its count every :data:`PROGRESS_STEP` bytes (the per-pull budget).
"""

from __future__ import annotations

import collections
import hashlib
import io
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from image_pull.errors import ImagePullError, InsufficientSpace, UnpackError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "MAX_EXPANSION_RATIO",
    "PROGRESS_STEP",
    "ChunkPipe",
    "CountingReader",
    "HashingReader",
    "PipeAborted",
    "Readable",
    "as_binary",
]

#: uncompressed bytes per compressed byte received, plus :data:`_RATIO_SLACK`
#: (DEFLATE tops out near 1032x, so this stops zstd/xz bombs; gzip bombs meet the budget)
MAX_EXPANSION_RATIO = 1100.0
_RATIO_SLACK = 1 << 20
#: how often (uncompressed bytes) a :class:`HashingReader` reports its count
PROGRESS_STEP = 1 << 20


class Readable(Protocol):
    """What the layer pipeline needs of a stream: ``read(n)`` returning bytes (b"" at EOF)."""

    def read(self, size: int = -1, /) -> bytes: ...


def as_binary(stream: Readable) -> BinaryIO:
    """``stream`` for an API typed ``BinaryIO`` that only calls ``read(n)`` on it (the unpacker)."""
    return cast(BinaryIO, stream)


class CountingReader(io.RawIOBase):
    """Counts the bytes read through it (the compressed bytes that really arrived)."""

    def __init__(self, inner: Readable) -> None:
        super().__init__()
        self._inner = inner
        # a buffered reader's read(n) waits for n bytes; read1 returns what has arrived,
        # so the decompressor (and the ratio check) see data as soon as it is there
        self._read = getattr(inner, "read1", inner.read)
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._read(size if size is not None and size >= 0 else 1 << 20)
        self.count += len(data)
        return data

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class PipeAborted(ImagePullError):
    """The other side of a ChunkPipe gave up."""


class ChunkPipe(io.RawIOBase):
    """Producer: ``await put(chunk)`` / ``finish()`` / ``abort(exc)`` on the loop.
    Consumer: blocking ``read``/``readinto`` in a worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_buffered: int = 8 << 20) -> None:
        super().__init__()
        self._loop = loop
        self._max = max_buffered
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._consumer_gone = False
        import asyncio  # lazily: the worker process imports this module without an event loop

        self._cond = threading.Condition()
        self._space = asyncio.Event()
        self._space.set()

    # ---------------------------------------------------------------- producer
    async def put(self, chunk: bytes) -> None:
        if not chunk:
            return
        with self._cond:
            if self._consumer_gone:
                raise PipeAborted("layer consumer stopped")
            self._chunks.append(memoryview(chunk))
            self._size += len(chunk)
            self._cond.notify()
            if self._size >= self._max:
                self._space.clear()
        while not self._space.is_set():
            await self._space.wait()
            with self._cond:
                if self._consumer_gone:
                    raise PipeAborted("layer consumer stopped")

    def finish(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def abort(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._eof = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- consumer
    def consumer_done(self) -> None:
        """The consumer stops reading (finished or failed); unblock the producer."""
        with self._cond:
            self._consumer_gone = True
            self._chunks.clear()
            self._size = 0
        self._loop.call_soon_threadsafe(self._space.set)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        want = len(b)
        if want == 0:
            return 0
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if self._error is not None:
                raise PipeAborted("layer download failed") from self._error
            if not self._chunks:
                return 0
            n = 0
            while self._chunks and n < want:
                head = self._chunks[0]
                take = min(len(head), want - n)
                b[n : n + take] = head[:take]
                n += take
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
            before = self._size
            self._size -= n
            if before >= self._max // 2 > self._size:
                self._loop.call_soon_threadsafe(self._space.set)
            return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            out = bytearray()
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    return bytes(out)
                out += chunk
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])


class HashingReader(io.RawIOBase):
    """Hashes (and counts) every byte read through it; bounded total."""

    def __init__(
        self,
        inner: Readable,
        algo: str,
        *,
        limit: int,
        source: CountingReader | None = None,
        ratio: float = MAX_EXPANSION_RATIO,
        progress: Callable[[int], None] | None = None,
        budget_left: int | None = None,
        budget_message: str = "the pull's unpacked-size budget is used up",
    ) -> None:
        super().__init__()
        self._inner = inner
        self._budget_left = budget_left
        self._budget_message = budget_message
        self.hasher = hashlib.new(algo)
        self.algo = algo
        self.count = 0
        self._limit = limit
        self._source = source
        self._ratio = ratio
        self._progress = progress
        self._next_report = PROGRESS_STEP

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size if size is not None and size >= 0 else 1 << 20)
        if data:
            self.count += len(data)
            if self.count > self._limit:
                raise UnpackError(f"layer expands beyond the limit of {self._limit} bytes")
            if self._budget_left is not None and self.count > self._budget_left:
                raise InsufficientSpace(self._budget_message)
            if self._source is not None and self.count > self._ratio * self._source.count + _RATIO_SLACK:
                got = self._source.count
                raise UnpackError(f"layer expands beyond {self._ratio:g}x the {got} compressed bytes sent")
            if self._progress is not None and self.count >= self._next_report:
                self._next_report = self.count + PROGRESS_STEP
                self._progress(self.count)
            self.hasher.update(data)
        return data

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read (and hash) whatever the unpacker left unread (tar padding blocks)."""
        while self.read(1 << 20):
            pass

    def digest(self) -> str:
        return f"{self.algo}:{self.hasher.hexdigest()}"
