"""coco_common.http_body against a raw HTTP server on 127.0.0.1 that sends exactly
the bytes each case needs (codings, stacked codings, cuts, stalls, trickles)."""

from __future__ import annotations

import gzip
import socket
import threading
import zlib
from collections.abc import Iterator

import httpx
import pytest

from coco_common.http_body import (
    DECODABLE,
    BodyEncodingError,
    BodyTooLarge,
    BodyTooSlow,
    BodyTransportError,
    SpeedLimit,
    read_body,
    read_body_sync,
)

MiB = 1 << 20


class RawServer:
    """Answers every connection with ``head`` + ``body``, optionally paced, then closes
    (or holds the connection for ``hold`` seconds)."""

    def __init__(self) -> None:
        self.head = b""
        self.body = b""
        self.interval = 0.0
        self.hold = 0.0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/x"
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def answer(self, body: bytes, *, length: int | None = None, **headers: str) -> None:
        h = {"Content-Length": str(len(body) if length is None else length), **headers}
        lines = ["HTTP/1.1 200 OK", *(f"{k.replace('_', '-')}: {v}" for k, v in h.items())]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.body = body

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        try:
            c.recv(65536)
            c.sendall(self.head)
            if self.interval:
                for i in range(0, len(self.body), 16):
                    if self._stop.wait(self.interval):
                        return
                    c.sendall(self.body[i : i + 16])
            else:
                c.sendall(self.body)
            if self.hold:
                self._stop.wait(self.hold)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def srv() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.stop()


async def get(srv: RawServer, limit: int, **kw: object) -> bytes:
    async with httpx.AsyncClient() as http, http.stream("GET", srv.url) as resp:
        return await read_body(resp, limit, **kw)  # type: ignore[arg-type]


def gz_bomb(n: int) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    return b"".join([*(co.compress(block) for _ in range(n // MiB)), co.flush()])


async def test_identity_body_within_the_limit(srv: RawServer) -> None:
    srv.answer(b"x" * 1000)
    assert await get(srv, 1000) == b"x" * 1000


async def test_declared_length_over_the_limit_fails_before_reading(srv: RawServer) -> None:
    srv.answer(b"x" * 10, length=10 * MiB)
    with pytest.raises(BodyTooLarge):
        await get(srv, MiB)


async def test_undeclared_length_is_cut_at_the_limit(srv: RawServer) -> None:
    srv.head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"  # close-delimited
    srv.body = b"y" * (3 * MiB)
    with pytest.raises(BodyTooLarge):
        await get(srv, MiB)


@pytest.mark.parametrize("coding", ["zstd", "br", "compress", "gzip"])
async def test_a_coding_not_allowed_is_refused(srv: RawServer, coding: str) -> None:
    srv.answer(b"\x00" * 64, Content_Encoding=coding)
    with pytest.raises(BodyEncodingError, match="refused Content-Encoding"):
        await get(srv, MiB)


async def test_gzip_bomb_is_decoded_only_up_to_the_limit(srv: RawServer) -> None:
    srv.answer(gz_bomb(64 * MiB), Content_Encoding="gzip")
    with pytest.raises(BodyTooLarge):
        await get(srv, MiB, decode=DECODABLE)


async def test_stacked_gzip_bomb_is_bounded(srv: RawServer) -> None:
    srv.answer(gzip.compress(gz_bomb(64 * MiB)), Content_Encoding="gzip, gzip")
    with pytest.raises(BodyTooLarge):
        await get(srv, MiB, decode=DECODABLE)


async def test_stacked_codings_decode_in_reverse_order(srv: RawServer) -> None:
    data = b"hello " * 1000
    body = gzip.compress(zlib.compress(data))  # deflate applied first, then gzip
    srv.answer(body, Content_Encoding="deflate, gzip")
    assert await get(srv, MiB, decode=DECODABLE) == data


async def test_raw_deflate_is_accepted(srv: RawServer) -> None:
    co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    srv.answer(co.compress(b"abc" * 100) + co.flush(), Content_Encoding="deflate")
    assert await get(srv, MiB, decode=DECODABLE) == b"abc" * 100


async def test_more_than_two_stacked_codings_are_refused(srv: RawServer) -> None:
    srv.answer(gzip.compress(gzip.compress(gzip.compress(b"x"))), Content_Encoding="gzip, gzip, gzip")
    with pytest.raises(BodyEncodingError, match="stacked"):
        await get(srv, MiB, decode=DECODABLE)


async def test_corrupt_and_truncated_gzip_are_encoding_errors(srv: RawServer) -> None:
    srv.answer(b"\x1f\x8b\x08\x00" + b"\xff" * 100, Content_Encoding="gzip")
    with pytest.raises(BodyEncodingError, match="corrupt"):
        await get(srv, MiB, decode=DECODABLE)
    srv.answer(gzip.compress(b"z" * 100000)[:-20], Content_Encoding="gzip")
    with pytest.raises(BodyEncodingError, match="ends early"):
        await get(srv, MiB, decode=DECODABLE)


async def test_padding_that_decodes_to_nothing_is_bounded(srv: RawServer) -> None:
    # empty stored DEFLATE blocks: 5 bytes in, nothing out, forever
    body = b"\x00\x00\x00\xff\xff" * (2 * MiB // 5)
    srv.answer(body, Content_Encoding="deflate")
    with pytest.raises(BodyTooLarge):
        await get(srv, 64 * 1024, decode=DECODABLE)


async def test_a_cut_body_is_a_transport_error_with_the_count(srv: RawServer) -> None:
    srv.answer(b"a" * 1000, length=5000)
    with pytest.raises(BodyTransportError) as ei:
        await get(srv, MiB)
    assert ei.value.received == 1000


async def test_a_trickle_fails_on_the_speed_limit(srv: RawServer) -> None:
    srv.answer(b"t" * 4096)
    srv.interval = 0.2  # 80 bytes/s
    with pytest.raises(BodyTooSlow, match="bytes/s"):
        await get(srv, MiB, speed=SpeedLimit(bytes_per_s=1000, window_s=1.0))


async def test_a_stall_fails_on_the_speed_limit(srv: RawServer) -> None:
    srv.answer(b"s" * 100, length=200)
    srv.hold = 30  # the server would close (a plain BodyTransportError) only after this
    with pytest.raises(BodyTooSlow):
        await get(srv, MiB, speed=SpeedLimit(bytes_per_s=10, window_s=1.0))


async def test_a_body_fast_enough_passes_the_speed_limit(srv: RawServer) -> None:
    srv.answer(b"f" * 4096)
    srv.interval = 0.001
    assert await get(srv, MiB, speed=SpeedLimit(bytes_per_s=100, window_s=1.0)) == b"f" * 4096


def test_sync_reader_bounds_a_gzip_bomb(srv: RawServer) -> None:
    srv.answer(gz_bomb(32 * MiB), Content_Encoding="gzip")
    with httpx.Client() as http, http.stream("GET", srv.url) as resp, pytest.raises(BodyTooLarge):
        read_body_sync(resp, MiB, decode=DECODABLE)
    srv.answer(gzip.compress(b"ok"), Content_Encoding="gzip")
    with httpx.Client() as http, http.stream("GET", srv.url) as resp:
        assert read_body_sync(resp, MiB, decode=DECODABLE) == b"ok"
