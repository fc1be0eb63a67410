"""Bounded reads of HTTP response bodies, one implementation for every HTTP reader.

A peer decides what ``Content-Encoding`` it sends, and an HTTP library that
decodes it for us turns a few KB on the wire into gigabytes before any size
check runs (a zstd or stacked ``gzip, gzip`` body expands ~1000x per layer).
So the body is read *raw* (``aiter_raw``/``iter_raw``: transfer framing
removed, content coding intact) and:

* a coding the caller did not allow is refused (:class:`BodyEncodingError`);
  registry blobs and manifests allow none (callers ask for ``identity``);
* an allowed coding (``gzip``, ``deflate``, stacked up to :data:`MAX_CODINGS`
  deep) is decoded here, each stage producing at most :data:`_PIECE` bytes per
  step and at most a little more than ``limit`` bytes in all, so memory and
  work stay near ``limit`` whatever the peer sends;
* the decoded body is capped at ``limit`` bytes (:class:`BodyTooLarge`); for an
  identity body a larger ``Content-Length`` fails before anything is read;
* a connection that breaks or stalls mid-body is a :class:`BodyTransportError`
  carrying how many raw bytes arrived (callers resume or retry); with a
  :class:`SpeedLimit` a body arriving slower than N bytes/s for M seconds of
  waiting is one too (:class:`BodyTooSlow`, like curl's ``--speed-limit``).

Errors carry the caller's ``what`` and never any header or body content.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx  # a caller that has a response has imported httpx already

__all__ = [
    "ACCEPT_DECODABLE",
    "DECODABLE",
    "MAX_CODINGS",
    "BodyEncodingError",
    "BodyTooLarge",
    "BodyTooSlow",
    "BodyTransportError",
    "HttpBodyError",
    "SpeedLimit",
    "aiter_body",
    "check_codings",
    "read_body",
    "read_body_sync",
]

#: codings this module can decode with an output bound (what clients may advertise)
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
#: the ``Accept-Encoding`` value for a reader that allows :data:`DECODABLE`
ACCEPT_DECODABLE = "gzip, deflate"
#: codings stacked deeper than this are refused
MAX_CODINGS = 2
_PIECE = 1 << 16  # largest output of one decoding step


class HttpBodyError(Exception):
    """Root of this module's errors."""


class BodyTooLarge(HttpBodyError):
    """The (decoded) body is larger than its limit."""


class BodyEncodingError(HttpBodyError):
    """A refused ``Content-Encoding``, or a coded body that does not decode."""


class BodyTransportError(HttpBodyError):
    """The connection broke or stalled while the body was arriving."""

    def __init__(self, message: str, *, received: int) -> None:
        super().__init__(message)
        self.received = received  # raw bytes that arrived before the fault


class BodyTooSlow(BodyTransportError):
    """The body arrived slower than the configured :class:`SpeedLimit`."""


@dataclass(frozen=True)
class SpeedLimit:
    """Fail a body that delivers fewer than ``bytes_per_s`` on average over
    ``window_s`` seconds spent waiting on the network (time the caller spends
    consuming what arrived does not count)."""

    bytes_per_s: int = 1024
    window_s: float = 30.0

    def __post_init__(self) -> None:
        if self.bytes_per_s < 1 or self.window_s <= 0:
            raise ValueError("SpeedLimit needs bytes_per_s >= 1 and window_s > 0")


def check_codings(resp: httpx.Response, allow: Iterable[str] = (), what: str = "response body") -> list[str]:
    """The response's content codings in the order they were applied (identity
    dropped); :class:`BodyEncodingError` for one not in ``allow``."""
    allowed = {a.lower() for a in allow}
    out: list[str] = []
    for raw in resp.headers.get_list("content-encoding", split_commas=True):
        c = raw.strip().lower()
        if c in ("", "identity"):
            continue
        if c not in allowed or c not in DECODABLE:
            shown = "".join(ch for ch in c[:40] if ch.isprintable())
            raise BodyEncodingError(f"{what}: refused Content-Encoding {shown!r}")
        out.append(c)
    if len(out) > MAX_CODINGS:
        raise BodyEncodingError(f"{what}: more than {MAX_CODINGS} stacked content codings")
    return out


class _Stage:
    """One bounded decoding stage (gzip, or deflate with or without the zlib wrapper)."""

    def __init__(self, coding: str, cap: int, what: str) -> None:
        self.coding = coding
        self.cap = cap
        self.what = what
        self.out = 0
        self._d: zlib._Decompress | None = None
        if coding in ("gzip", "x-gzip"):
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _bad(self) -> BodyEncodingError:
        return BodyEncodingError(f"{self.what}: corrupt {self.coding} content coding")

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._d is None:
            if not data:
                return
            # HTTP "deflate" is zlib-wrapped (RFC 9110), but some servers send raw DEFLATE
            zlib_header = len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        d = self._d
        while True:
            if d.eof:
                if data or d.unused_data:
                    raise BodyEncodingError(f"{self.what}: data after the end of the {self.coding} stream")
                return
            try:
                piece = d.decompress(data, _PIECE)
            except zlib.error:
                raise self._bad() from None
            data = d.unconsumed_tail
            if piece:
                self.out += len(piece)
                if self.out > self.cap:
                    raise BodyTooLarge(f"{self.what} decodes to more than {self.cap} bytes")
                yield piece
            if not data and len(piece) < _PIECE:
                return

    def finish(self) -> None:
        if self._d is not None and not self._d.eof:
            raise BodyEncodingError(f"{self.what}: {self.coding} content coding ends early")


class _Decoder:
    """The whole coding stack: raw bytes in, decoded bytes (bounded) out."""

    def __init__(self, codings: list[str], limit: int, what: str) -> None:
        slack = limit + (limit >> 3) + _PIECE  # an inner coding may be a little larger than its output
        # applied in header order, so decoded in reverse
        self.stages = [_Stage(c, slack, what) for c in reversed(codings)]
        self.raw_cap = slack if codings else limit
        self.limit = limit
        self.what = what
        self.out = 0

    def _through(self, k: int, data: bytes) -> Iterator[bytes]:
        if k == len(self.stages):
            yield data
            return
        for piece in self.stages[k].feed(data):
            yield from self._through(k + 1, piece)

    def push(self, raw: bytes) -> Iterator[bytes]:
        for piece in self._through(0, raw):
            self.out += len(piece)
            if self.out > self.limit:
                raise BodyTooLarge(f"{self.what} is larger than {self.limit} bytes")
            yield piece

    def finish(self) -> None:
        for s in self.stages:
            s.finish()


def _early_size_check(resp: httpx.Response, codings: list[str], limit: int, what: str) -> None:
    cl = resp.headers.get("content-length", "").strip()
    if cl.isdigit() and int(cl) > (limit if not codings else limit + (limit >> 3) + _PIECE):
        raise BodyTooLarge(f"{what} is larger than {limit} bytes")


def _already_read(resp: httpx.Response) -> bool:
    """A response built from bytes in memory (``httpx.Response(content=...)``, as
    mock transports return) was read and decoded when it was made."""
    return resp.is_stream_consumed and hasattr(resp, "_content")


def _bounded_content(resp: httpx.Response, limit: int, what: str) -> bytes:
    if len(resp.content) > limit:
        raise BodyTooLarge(f"{what} is larger than {limit} bytes")
    return resp.content


async def aiter_body(
    resp: httpx.Response,
    *,
    limit: int,
    decode: Iterable[str] = (),
    speed: SpeedLimit | None = None,
    what: str = "response body",
) -> AsyncGenerator[bytes, None]:
    """Yield the decoded body of a streamed response, at most ``limit`` bytes in all.

    ``decode`` lists the content codings the caller accepts (a subset of
    :data:`DECODABLE`); any other coding is refused before the body is read.
    """
    import httpx  # already loaded by whoever made ``resp``

    codings = check_codings(resp, decode, what)
    _early_size_check(resp, codings, limit, what)
    if _already_read(resp):
        yield _bounded_content(resp, limit, what)
        return
    dec = _Decoder(codings, limit, what)
    received = 0
    it = resp.aiter_raw().__aiter__()
    need = speed.bytes_per_s * speed.window_s if speed else 0.0
    win_bytes = 0
    win_waited = 0.0
    try:
        while True:
            t0 = time.monotonic()
            try:
                if speed is None:
                    raw = await it.__anext__()
                else:
                    async with asyncio.timeout(max(speed.window_s - win_waited, 0.001)):
                        raw = await it.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                assert speed is not None
                raise BodyTooSlow(
                    f"{what}: less than {speed.bytes_per_s} bytes/s for {speed.window_s:g} s",
                    received=received,
                ) from None
            if speed is not None:
                win_waited += time.monotonic() - t0
                win_bytes += len(raw)
                if win_bytes >= need:
                    win_bytes, win_waited = 0, 0.0
            received += len(raw)
            if received > dec.raw_cap:
                raise BodyTooLarge(f"{what} is larger than {limit} bytes")
            for piece in dec.push(raw):
                yield piece
        dec.finish()
    except httpx.TransportError as exc:  # timeouts, resets, short bodies, protocol errors
        raise BodyTransportError(
            f"{what}: {type(exc).__name__} after {received} bytes", received=received
        ) from None
    except httpx.StreamError as exc:  # the response was closed or consumed under us
        raise BodyTransportError(f"{what}: {type(exc).__name__}", received=received) from None


async def read_body(
    resp: httpx.Response,
    limit: int,
    *,
    decode: Iterable[str] = (),
    speed: SpeedLimit | None = None,
    what: str = "response body",
) -> bytes:
    """The whole decoded body of a streamed response (see :func:`aiter_body`)."""
    buf = bytearray()
    async for piece in aiter_body(resp, limit=limit, decode=decode, speed=speed, what=what):
        buf += piece
    return bytes(buf)


def read_body_sync(
    resp: httpx.Response, limit: int, *, decode: Iterable[str] = (), what: str = "response body"
) -> bytes:
    """:func:`read_body` for a streamed response of a synchronous ``httpx.Client``
    (no speed limit: the client's read timeout bounds a stall)."""
    import httpx  # already loaded by whoever made ``resp``

    codings = check_codings(resp, decode, what)
    _early_size_check(resp, codings, limit, what)
    if _already_read(resp):
        return _bounded_content(resp, limit, what)
    dec = _Decoder(codings, limit, what)
    buf = bytearray()
    received = 0
    try:
        for raw in resp.iter_raw():
            received += len(raw)
            if received > dec.raw_cap:
                raise BodyTooLarge(f"{what} is larger than {limit} bytes")
            for piece in dec.push(raw):
                buf += piece
        dec.finish()
    except httpx.TransportError as exc:
        raise BodyTransportError(
            f"{what}: {type(exc).__name__} after {received} bytes", received=received
        ) from None
    except httpx.StreamError as exc:
        raise BodyTransportError(f"{what}: {type(exc).__name__}", received=received) from None
    return bytes(buf)
