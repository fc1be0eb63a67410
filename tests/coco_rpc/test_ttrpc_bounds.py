"""The ttRPC server under hostile peers: stream ids, junk frames, the shared
request-bytes budget, the connection cap, frame and idle timeouts.

Every peer here is hand-framed over a Unix socket (10-byte header +
protobuf ``ttrpc.Request``), independent of :class:`TtrpcClient`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coco_rpc import Code, ServerLimits, bind
from coco_rpc.limits import MESSAGE_LENGTH_MAX, REQUEST_OVERHEAD
from coco_rpc.protos import api_pb2, ttrpc_pb2
from coco_rpc.ttrpc import TtrpcServer

_HDR = struct.Struct(">IIBB")


def _request(path: str, *, pad: int = 0) -> bytes:
    payload = api_pb2.GetResourceRequest(ResourcePath=path + "x" * pad).SerializeToString()
    return ttrpc_pb2.Request(
        service="api.GetResourceService", method="GetResource", payload=payload
    ).SerializeToString()


def _frame(stream_id: int, body: bytes, mtype: int = 1, flags: int = 0) -> bytes:
    return _HDR.pack(len(body), stream_id, mtype, flags) + body


class _Peer:
    """A blocking hand-framed ttRPC peer (run its calls in a thread)."""

    def __init__(self, path: Path, timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv(self) -> tuple[int, int, ttrpc_pb2.Response]:
        assert self._fill(10), "server closed the connection"
        n, sid, mtype, _ = _HDR.unpack(self._buf[:10])
        assert self._fill(10 + n), "server closed the connection mid-frame"
        body, self._buf = self._buf[10 : 10 + n], self._buf[10 + n :]
        return sid, mtype, ttrpc_pb2.Response.FromString(body)

    def closed_by_server(self) -> bool:
        """True once the server closed (EOF or reset) before sending anything more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class _Gate:
    """GetResource handler that blocks every call until released."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.open = asyncio.Event()

    async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
        if req.ResourcePath.startswith("big"):
            return api_pb2.GetResourceResponse(Resource=b"r" * (3 << 20))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if req.ResourcePath.startswith("wait"):
                await self.open.wait()
        finally:
            self.running -= 1
        return api_pb2.GetResourceResponse(Resource=req.ResourcePath[:8].encode())


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    servers: list[TtrpcServer] = []

    async def make(limits: ServerLimits | None = None) -> tuple[_Gate, TtrpcServer]:
        gate = _Gate()
        svc = bind(api_pb2.DESCRIPTOR.services_by_name["GetResourceService"], gate)
        srv = TtrpcServer(tmp_path / f"s{len(servers)}.sock", [svc], limits=limits)
        await srv.start()
        servers.append(srv)
        return gate, srv

    yield make
    for srv in servers:
        await srv.close()


async def _until(cond: Callable[[], bool], what: str, tries: int = 500) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_stream_ids_refused_as_upstream(make_server) -> None:  # type: ignore[no-untyped-def]
    _, srv = await make_server()

    def run() -> list[tuple[int, int, str]]:
        p = _Peer(srv.path)
        out = []
        # even ids (0 included) on any frame type: ttrpc-rust "stream id must be odd"
        for sid, mtype in ((0, 1), (2, 1), (4, 3), (6, 9)):
            p.send(_frame(sid, _request("even"), mtype))
            sid_back, mtype_back, resp = p.recv()
            out.append((sid_back, resp.status.code, resp.status.message))
            assert mtype_back == 2
        # a data frame on an odd id: no streaming method is served
        p.send(_frame(1, b"x", 3))
        sid_back, _, resp = p.recv()
        out.append((sid_back, resp.status.code, resp.status.message))
        # a request on 5, then 5 again and 3: ids must increase (containerd/ttrpc)
        for sid in (5, 5, 3):
            p.send(_frame(sid, _request("id")))
            sid_back, _, resp = p.recv()
            out.append((sid_back, resp.status.code, resp.status.message))
        # the connection still serves, and the top odd id works
        p.send(_frame(0xFFFFFFFF, _request("last")))
        sid_back, _, resp = p.recv()
        out.append(
            (sid_back, resp.status.code, api_pb2.GetResourceResponse.FromString(resp.payload).Resource)
        )
        p.close()
        return out

    out = await asyncio.to_thread(run)
    odd = (Code.INVALID_ARGUMENT, "stream id must be odd")
    reuse = (Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
    assert out[:4] == [(0, *odd), (2, *odd), (4, *odd), (6, *odd)]
    assert out[4] == (1, Code.INVALID_ARGUMENT, "Stream is no longer active")
    assert out[5] == (5, Code.OK, "")
    assert out[6:8] == [(5, *reuse), (3, *reuse)]
    assert out[8] == (0xFFFFFFFF, Code.OK, b"last")


async def test_junk_frames_log_one_line_per_connection(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    _, srv = await make_server()
    caplog.set_level(logging.DEBUG, logger="coco_rpc.ttrpc")

    def run(n_conns: int, frames: int) -> None:
        for _ in range(n_conns):
            p = _Peer(srv.path)
            # odd-id frames of unknown types are dropped without an answer
            p.send(b"".join(_frame(2 * i + 1, b"junk", 9) for i in range(frames)))
            p.send(_frame(2 * frames + 1, _request("ok")))
            sid, _, resp = p.recv()
            assert (sid, resp.status.code) == (2 * frames + 1, Code.OK)
            p.close()

    await asyncio.to_thread(run, 1, 5000)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "further bad frames on it are not logged" in warnings[0].getMessage()
    # many connections: one line each, and at most a burst per minute overall
    await asyncio.to_thread(run, 30, 3)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 2 <= len(warnings) <= 10


async def test_shared_byte_budget_bounds_requests_across_connections(make_server) -> None:  # type: ignore[no-untyped-def]
    pad = 3 << 20  # 3 MiB request bodies
    cost = pad + 64 + REQUEST_OVERHEAD
    limits = ServerLimits(max_in_flight_bytes=2 * cost + 1000 + (1 << 20), small_request_reserve=1 << 20)
    gate, srv = await make_server(limits)
    peers = [await asyncio.to_thread(_Peer, srv.path) for _ in range(6)]
    for i, p in enumerate(peers):
        # each peer sends its whole frame in the background (the server may not read it yet)
        asyncio.get_running_loop().run_in_executor(None, p.send, _frame(1, _request(f"wait{i}", pad=pad)))
    await _until(lambda: gate.running == 2, "two handlers running")
    await asyncio.sleep(0.3)
    # only what fits the budget was read and dispatched; the rest waits unread
    assert gate.running == 2 and gate.peak == 2
    assert srv.in_flight_bytes <= limits.max_in_flight_bytes - limits.small_request_reserve
    gate.open.set()
    results = await asyncio.gather(*(asyncio.to_thread(p.recv) for p in peers))
    assert [(sid, r.status.code) for sid, _, r in results] == [(1, Code.OK)] * 6
    assert gate.peak == 2
    await _until(lambda: srv.in_flight_bytes == 0, "budget released")
    for p in peers:
        p.close()


async def test_small_calls_are_served_while_stalled_large_frames_hold_the_budget(make_server) -> None:  # type: ignore[no-untyped-def]
    # the F5 memory hold: peers declare 4 MiB frames, send part of them and stall
    _, srv = await make_server()  # defaults: 24 MiB for large frames, 8 MiB kept for small ones
    limits = srv.limits
    stalled = [await asyncio.to_thread(_Peer, srv.path) for _ in range(12)]
    for p in stalled:
        p.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            p.sock.send(_HDR.pack(MESSAGE_LENGTH_MAX, 1, 1, 0) + b"\0" * (1 << 20))
    await _until(
        lambda: (
            srv.in_flight_bytes
            >= limits.max_in_flight_bytes - limits.small_request_reserve - MESSAGE_LENGTH_MAX
        ),
        "large frames hold the budget",
    )
    assert srv.in_flight_bytes <= limits.max_in_flight_bytes - limits.small_request_reserve

    def small_call() -> int:
        p = _Peer(srv.path)
        p.send(_frame(1, _request("small")))
        code = p.recv()[2].status.code
        p.close()
        return code

    assert [await asyncio.to_thread(small_call) for _ in range(3)] == [Code.OK] * 3
    for p in stalled:
        p.close()
    await _until(lambda: srv.in_flight_bytes == 0 and srv.connections == 0, "stalled peers gone")


async def test_one_connection_gets_only_its_share_of_the_budget(make_server) -> None:  # type: ignore[no-untyped-def]
    pad = 3 << 20
    gate, srv = await make_server()  # defaults: two full-size requests per connection
    p = await asyncio.to_thread(_Peer, srv.path)
    frames = b"".join(_frame(2 * i + 1, _request(f"wait{i}", pad=pad)) for i in range(5))
    sender = asyncio.get_running_loop().run_in_executor(None, p.send, frames)
    await _until(lambda: gate.running == 2, "two handlers running")
    await asyncio.sleep(0.3)
    assert gate.running == 2
    assert srv.in_flight_bytes <= ServerLimits().max_in_flight_bytes_per_connection
    gate.open.set()
    await sender
    got = sorted([(await asyncio.to_thread(p.recv))[0] for _ in range(5)])
    assert got == [1, 3, 5, 7, 9] and gate.peak == 2
    p.close()


async def test_connection_cap(make_server) -> None:  # type: ignore[no-untyped-def]
    _, srv = await make_server(ServerLimits(max_connections=3))

    def call(p: _Peer, sid: int) -> int:
        p.send(_frame(sid, _request("ok")))
        return p.recv()[2].status.code

    peers = [await asyncio.to_thread(_Peer, srv.path) for _ in range(3)]
    assert [await asyncio.to_thread(call, p, 1) for p in peers] == [Code.OK] * 3
    extra = await asyncio.to_thread(_Peer, srv.path)
    assert await asyncio.to_thread(extra.closed_by_server)
    assert srv.connections == 3
    peers[0].close()
    await _until(lambda: srv.connections == 2, "a slot freed")
    again = await asyncio.to_thread(_Peer, srv.path)
    assert await asyncio.to_thread(call, again, 1) == Code.OK
    for p in [*peers[1:], extra, again]:
        p.close()


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"\x00\x00\x00", id="half-a-header"),
        pytest.param(_HDR.pack(100, 1, 1, 0) + b"x" * 10, id="body-stalls"),
        pytest.param(_HDR.pack(MESSAGE_LENGTH_MAX + 1, 1, 1, 0) + b"x" * 10, id="oversize-body-stalls"),
    ],
)
async def test_stalled_frame_is_disconnected_and_frees_its_budget(make_server, partial: bytes) -> None:  # type: ignore[no-untyped-def]
    _, srv = await make_server(ServerLimits(frame_timeout=0.5))
    p = await asyncio.to_thread(_Peer, srv.path)
    p.send(partial)
    assert await asyncio.to_thread(p.closed_by_server)
    await _until(lambda: srv.connections == 0 and srv.in_flight_bytes == 0, "connection gone")
    p.close()


async def test_peer_that_never_reads_its_responses_is_disconnected(make_server) -> None:  # type: ignore[no-untyped-def]
    _, srv = await make_server(ServerLimits(frame_timeout=0.5))
    p = await asyncio.to_thread(_Peer, srv.path)
    # three 3 MiB responses cannot sit in the socket buffers of a peer that does not read
    p.send(b"".join(_frame(2 * i + 1, _request(f"big{i}")) for i in range(3)))
    await _until(lambda: srv.connections == 0, "connection closed by the server")
    await _until(lambda: srv.in_flight_bytes == 0, "budget released")
    p.close()


async def test_idle_timeout_spares_connections_with_work_in_flight(make_server) -> None:  # type: ignore[no-untyped-def]
    gate, srv = await make_server(ServerLimits(idle_timeout=0.3))
    idle = await asyncio.to_thread(_Peer, srv.path)
    busy = await asyncio.to_thread(_Peer, srv.path)
    await asyncio.to_thread(busy.send, _frame(1, _request("wait")))
    assert await asyncio.to_thread(idle.closed_by_server)
    await asyncio.sleep(0.8)  # well past the idle timeout, with the request still running
    assert srv.connections == 1 and gate.running == 1
    gate.open.set()
    sid, _, resp = await asyncio.to_thread(busy.recv)
    assert (sid, resp.status.code) == (1, Code.OK)
    assert await asyncio.to_thread(busy.closed_by_server)
    idle.close()
    busy.close()


async def test_idle_connections_stay_open_by_default(make_server) -> None:  # type: ignore[no-untyped-def]
    # upstream clients (the Kata agent's CDH client) keep one connection for
    # the life of the guest without reconnecting
    assert ServerLimits().idle_timeout is None
    _, srv = await make_server(ServerLimits(frame_timeout=0.2))
    p = await asyncio.to_thread(_Peer, srv.path)
    await asyncio.sleep(0.6)
    await asyncio.to_thread(p.send, _frame(1, _request("late")))
    assert (await asyncio.to_thread(p.recv))[2].status.code == Code.OK
    p.close()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_in_flight_bytes"):
        ServerLimits(max_in_flight_bytes=MESSAGE_LENGTH_MAX)
    with pytest.raises(ValueError, match="max_in_flight_bytes"):
        ServerLimits(max_in_flight_bytes=12 << 20)  # less than one full message besides the reserve
    with pytest.raises(ValueError, match="frame_timeout"):
        ServerLimits(frame_timeout=0)
    with pytest.raises(ValueError, match="at least 1"):
        ServerLimits(max_connections=0)


async def test_byte_budget_waiters_and_cancellation() -> None:
    from coco_rpc.limits import ByteBudget

    b = ByteBudget(100)
    await b.acquire(80)
    large = asyncio.create_task(b.acquire(30, ceiling=90))  # a large request: may fill only 90
    small = asyncio.create_task(b.acquire(15))  # a small one passes the waiting large one
    await asyncio.sleep(0)
    assert small.done() and not large.done() and b.used == 95
    cancelled = asyncio.create_task(b.acquire(50, ceiling=90))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert b.used == 95  # a waiter cancelled before its grant takes nothing
    b.release(80)
    await asyncio.sleep(0)
    assert large.done() and b.used == 45
    b.release(15)
    b.release(30)
    assert b.used == 0
    with pytest.raises(ValueError):
        await b.acquire(101)
