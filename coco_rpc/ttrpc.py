"""ttRPC over Unix sockets: the framing containerd/ttrpc and ttrpc-rust speak.

A frame is a 10-byte header (u32 BE payload length, u32 BE stream id, u8
type: 1 request, 2 response, u8 flags) followed by a protobuf
``ttrpc.Request`` or ``ttrpc.Response``. Messages above 4 MiB are refused in
both directions. Clients use odd, increasing stream ids; requests on one
connection may be answered out of order. The server's resource bounds are
described in :mod:`coco_rpc.limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from coco_rpc.errors import Code, RpcError
from coco_rpc.limits import MESSAGE_LENGTH_MAX, REQUEST_OVERHEAD, SMALL_REQUEST, ByteBudget, ServerLimits
from coco_rpc.protos import ttrpc_pb2
from coco_rpc.service import Service

__all__ = [
    "MAX_IN_FLIGHT_PER_CONNECTION",
    "MESSAGE_LENGTH_MAX",
    "ServerLimits",
    "TtrpcClient",
    "TtrpcServer",
]

log = logging.getLogger(__name__)

#: Requests one connection may have in flight by default; past it the server
#: stops reading that connection until one finishes.
MAX_IN_FLIGHT_PER_CONNECTION = ServerLimits().max_in_flight_per_connection
_HEADER = struct.Struct(">IIBB")
_TYPE_REQUEST = 1
_TYPE_RESPONSE = 2
_TYPE_DATA = 3

R = TypeVar("R", bound=Message)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes | None]:
    """Read one frame. The body is ``None`` when it was over the size limit
    (its bytes are consumed and discarded so the stream stays in sync)."""
    header = await reader.readexactly(_HEADER.size)
    length, stream_id, mtype, flags = _HEADER.unpack(header)
    if length > MESSAGE_LENGTH_MAX:
        await _skip(reader, length)
        return stream_id, mtype, flags, None
    return stream_id, mtype, flags, await reader.readexactly(length)


async def _skip(reader: asyncio.StreamReader, n: int) -> None:
    """Consume ``n`` bytes without keeping them (bounded memory)."""
    while n:
        chunk = await reader.read(min(n, 1 << 16))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(chunk)


def _parse_request(body: bytes) -> ttrpc_pb2.Request | None:
    req = ttrpc_pb2.Request()
    try:
        req.ParseFromString(body)
    except DecodeError:
        return None
    return req


def _frame(stream_id: int, mtype: int, body: bytes) -> bytes:
    return _HEADER.pack(len(body), stream_id, mtype, 0) + body


def _is_served(path: Path) -> bool:
    """Whether a live server accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class _WarnLimiter:
    """At most ``burst`` warning lines per ``period`` seconds for one server;
    the number held back is reported with the next line that gets through."""

    def __init__(self, burst: int = 10, period: float = 60.0) -> None:
        self._burst = burst
        self._period = period
        self._window = time.monotonic()
        self._lines = 0
        self._held = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self._period:
            self._window, self._lines = now, 0
        if self._lines >= self._burst:
            self._held += 1
            return
        self._lines += 1
        if self._held:
            msg += " (%d similar warnings suppressed)"
            args = (*args, self._held)
            self._held = 0
        log.warning(msg, *args)


class _FrameTimeout(RpcError):
    """A frame (or a response write) did not complete within the frame timeout: the
    server closes that connection (never sent to the peer as a status)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.DEADLINE_EXCEEDED, message)


class _Connection:
    """State of one accepted connection."""

    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: ServerLimits
    ) -> None:
        self.name = f"#{number}"
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.write_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(limits.max_in_flight_per_connection)
        self.budget = ByteBudget(limits.max_in_flight_bytes_per_connection)
        self.pending: set[asyncio.Task[None]] = set()
        self.last_stream_id = 0
        self.protocol_errors = 0
        self.last_activity = time.monotonic()

    async def read_exactly(self, n: int) -> bytes:
        try:
            async with asyncio.timeout(self.limits.frame_timeout):
                return await self.reader.readexactly(n)
        except TimeoutError as exc:
            raise _FrameTimeout(f"a {n}-byte read did not complete in {self.limits.frame_timeout}s") from exc

    async def discard(self, n: int) -> None:
        """Consume ``n`` body bytes without keeping them (bounded memory)."""
        try:
            async with asyncio.timeout(self.limits.frame_timeout):
                await _skip(self.reader, n)
        except TimeoutError as exc:
            raise _FrameTimeout(f"a frame body did not arrive in {self.limits.frame_timeout}s") from exc

    async def first_byte(self) -> bytes:
        """Wait for the first byte of the next frame, closing the connection
        when it stays idle (nothing in flight) past the idle timeout."""
        idle = self.limits.idle_timeout
        while True:
            if idle is None:
                return await self.reader.readexactly(1)
            try:
                async with asyncio.timeout(idle):
                    return await self.reader.readexactly(1)
            except TimeoutError:
                if self.pending or time.monotonic() - self.last_activity < idle:
                    continue
                raise

    async def send(self, stream_id: int, body: bytes) -> None:
        async with self.write_lock:
            self.writer.write(_frame(stream_id, _TYPE_RESPONSE, body))
            try:
                async with asyncio.timeout(self.limits.frame_timeout):
                    await self.writer.drain()
            except TimeoutError as exc:
                raise _FrameTimeout(
                    f"the peer did not read a response in {self.limits.frame_timeout}s"
                ) from exc
        self.last_activity = time.monotonic()

    async def send_status(self, stream_id: int, code: Code, message: str) -> None:
        resp = ttrpc_pb2.Response()
        resp.status.code = int(code)
        resp.status.message = message
        await self.send(stream_id, resp.SerializeToString())

    def abort(self) -> None:
        self.writer.transport.abort()


class TtrpcServer:
    """Serves one or more :class:`Service` objects on a Unix socket.

    Status codes follow ttrpc-rust 0.9.0, the server upstream's AA and CDH
    use: an unknown service is ``INVALID_ARGUMENT "<service> service does not
    exist"``, an unknown method ``UNIMPLEMENTED "<method> method"``, a method
    declared in the proto but not served ``NOT_FOUND "/<service>/<method> is
    not supported"``, a frame over 4 MiB ``INVALID_ARGUMENT "message length N
    exceed maximum message size of 4194304"`` on its stream (the connection
    stays usable), an even stream id ``INVALID_ARGUMENT "stream id must be
    odd"``. A request whose stream id does not increase is refused as
    containerd/ttrpc does. Resource use is bounded by :class:`ServerLimits`.
    """

    #: the inode of the socket this server bound (close() removes only that one)
    _inode: int | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        services: Iterable[Service],
        *,
        limits: ServerLimits | None = None,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or ServerLimits()
        self._services = {s.name: s for s in services}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[_Connection] = set()
        self._budget = ByteBudget(self.limits.max_in_flight_bytes)
        self._warn = _WarnLimiter()
        self._accepted = 0

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def in_flight_bytes(self) -> int:
        """Request bytes held against the shared budget now."""
        return self._budget.used

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket() and _is_served(self.path):
            # upstream removes the path unconditionally, cutting the running server off
            raise OSError(
                errno.EADDRINUSE,
                f"another server is serving on unix://{self.path} (stop it first, or use another socket)",
            )
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket() or not self.path.exists():
                self.path.unlink()
        self._server = await asyncio.start_unix_server(self._connection, path=str(self.path))
        self._inode = self.path.stat().st_ino
        log.info("ttRPC listening on unix://%s", self.path)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        for c in list(self._connections):
            c.writer.close()
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()  # only our own socket, not one a later server bound

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_connections:
            self._warn.warn(
                "ttRPC: refusing a connection: %d are open (the limit)", self.limits.max_connections
            )
            writer.transport.abort()
            return
        self._accepted += 1
        conn = _Connection(self._accepted, reader, writer, self.limits)
        self._connections.add(conn)
        try:
            await self._read_loop(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except _FrameTimeout as exc:
            self._warn.warn("ttRPC: closing connection %s: %s", conn.name, exc.message)
            conn.abort()
        except TimeoutError:
            log.debug("ttRPC: closing connection %s: idle for %ss", conn.name, self.limits.idle_timeout)
        finally:
            for t in list(conn.pending):
                t.cancel()
            self._connections.discard(conn)
            if conn.protocol_errors > 1:
                log.debug("ttRPC: connection %s sent %d bad frames", conn.name, conn.protocol_errors)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _protocol_error(self, conn: _Connection, what: str) -> None:
        """One warning line per connection, however many bad frames it sends."""
        conn.protocol_errors += 1
        if conn.protocol_errors == 1:
            self._warn.warn(
                "ttRPC: connection %s: %s (further bad frames on it are not logged)", conn.name, what
            )

    async def _read_loop(self, conn: _Connection) -> None:
        while True:
            first = await conn.first_byte()
            header = first + await conn.read_exactly(_HEADER.size - 1)
            length, stream_id, mtype, _flags = _HEADER.unpack(header)
            conn.last_activity = time.monotonic()
            if length > MESSAGE_LENGTH_MAX:
                await conn.discard(length)
                await conn.send_status(
                    stream_id,
                    Code.INVALID_ARGUMENT,
                    f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}",
                )
                continue
            refusal = self._refusal(conn, stream_id, mtype)
            if refusal is not None:
                await conn.discard(length)
                self._protocol_error(conn, f"{refusal} (stream {stream_id}, frame type {mtype})")
                if mtype in (_TYPE_REQUEST, _TYPE_DATA) or stream_id % 2 == 0:
                    await conn.send_status(stream_id, Code.INVALID_ARGUMENT, refusal)
                continue
            conn.last_stream_id = stream_id
            cost = length + REQUEST_OVERHEAD
            await conn.slots.acquire()
            acquired: list[ByteBudget] = []
            try:
                await conn.budget.acquire(cost)
                acquired.append(conn.budget)
                await self._budget.acquire(cost, self._ceiling(length))
                acquired.append(self._budget)
                body = await conn.read_exactly(length)
                req = _parse_request(body)
                del body
            except BaseException:
                self._release(conn, acquired, cost)
                raise
            if req is None:
                self._release(conn, acquired, cost)
                await conn.send_status(stream_id, Code.INVALID_ARGUMENT, "malformed ttRPC request")
                continue
            task = asyncio.create_task(self._handle(conn, stream_id, req, cost))
            conn.pending.add(task)
            self._tasks.add(task)
            task.add_done_callback(conn.pending.discard)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _refusal(conn: _Connection, stream_id: int, mtype: int) -> str | None:
        """Why a frame that is not an acceptable new request is refused
        (ttrpc-rust's and containerd/ttrpc's wording), or None to serve it."""
        if stream_id % 2 == 0:
            return "stream id must be odd"
        if mtype == _TYPE_DATA:
            return "Stream is no longer active"  # no streaming method is served
        if mtype != _TYPE_REQUEST:
            return "unexpected frame type ignored"
        if stream_id <= conn.last_stream_id:
            return "StreamID cannot be re-used and must increment"
        return None

    def _ceiling(self, length: int) -> int:
        """How much of the shared budget a request of ``length`` bytes may fill."""
        if length <= SMALL_REQUEST:
            return self.limits.max_in_flight_bytes
        return self.limits.max_in_flight_bytes - self.limits.small_request_reserve

    def _release(self, conn: _Connection, budgets: list[ByteBudget], cost: int) -> None:
        for budget in budgets:
            budget.release(cost)
        conn.slots.release()

    async def _handle(self, conn: _Connection, stream_id: int, req: ttrpc_pb2.Request, cost: int) -> None:
        try:
            resp = ttrpc_pb2.Response()
            try:
                resp.payload = await self._dispatch(req)
                resp.status.code = Code.OK
            except RpcError as exc:
                resp.status.code = int(exc.code)
                resp.status.message = exc.message
            out = resp.SerializeToString()
            if len(out) > MESSAGE_LENGTH_MAX:
                resp = ttrpc_pb2.Response()
                resp.status.code = Code.INVALID_ARGUMENT
                resp.status.message = (
                    f"message length {len(out)} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
                )
                out = resp.SerializeToString()
            await conn.send(stream_id, out)
        except ConnectionError:
            pass
        except _FrameTimeout as exc:
            self._warn.warn("ttRPC: closing connection %s: %s", conn.name, exc.message)
            conn.abort()
        finally:
            self._release(conn, [conn.budget, self._budget], cost)

    async def _dispatch(self, req: ttrpc_pb2.Request) -> bytes:
        service = self._services.get(req.service)
        if service is None:
            raise RpcError(Code.INVALID_ARGUMENT, f"{req.service} service does not exist")
        method = service.methods.get(req.method)
        if method is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{req.method} method")
        path = f"/{req.service}/{req.method}"
        if method.handler is None:
            raise RpcError(Code.NOT_FOUND, f"{path} is not supported")
        msg = method.request_type()
        try:
            msg.ParseFromString(req.payload)
        except DecodeError as exc:
            # ttrpc-rust: the generated handler's decode error becomes UNKNOWN.
            raise RpcError(Code.UNKNOWN, f"ttrpc err: {path}: malformed request message") from exc
        finally:
            req.ClearField("payload")
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        try:
            async with asyncio.timeout(timeout):  # in this task: no second task per request
                result = await method.handler(msg)
        except RpcError:
            raise
        except TimeoutError as exc:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{path}: deadline exceeded") from exc
        except Exception as exc:
            log.warning("%s failed: %s", path, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            raise RpcError(Code.INTERNAL, f"{service.error_prefix}{exc}") from exc
        return result.SerializeToString()


class TtrpcClient:
    """An asyncio ttRPC client on one Unix-socket connection.

    Calls may run concurrently; each gets its own stream id. Use as an async
    context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, connect_timeout: float = 10.0) -> None:
        self.path = str(path)
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 1
        self._waiters: dict[int, asyncio.Future[bytes | None]] = {}
        self._recv_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> TtrpcClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        if self._recv_task is not None:
            self._recv_task.cancel()
            self._recv_task = None
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise RpcError(Code.UNAVAILABLE, f"cannot connect to unix://{self.path}: {exc}") from exc
        self._recv_task = asyncio.create_task(self._receive())

    async def close(self) -> None:
        if self._recv_task is not None:
            self._recv_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recv_task
            self._recv_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        self._fail_all(RpcError(Code.UNAVAILABLE, "connection closed"))

    def _fail_all(self, exc: Exception) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()

    async def _receive(self) -> None:
        assert self._reader is not None
        try:
            while True:
                stream_id, mtype, _flags, body = await _read_frame(self._reader)
                fut = self._waiters.pop(stream_id, None)
                if fut is None or fut.done() or mtype != _TYPE_RESPONSE:
                    continue
                fut.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._fail_all(RpcError(Code.UNAVAILABLE, f"ttRPC connection lost: {exc}"))
            self._writer = None

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        """Call ``/service/method``; raises :class:`RpcError` on a non-OK status,
        a lost connection, or when ``timeout`` (seconds) passes."""
        await self.connect()
        req = ttrpc_pb2.Request(service=service, method=method, payload=request.SerializeToString())
        if timeout is not None:
            req.timeout_nano = int(timeout * 1e9)
        body = req.SerializeToString()
        if len(body) > MESSAGE_LENGTH_MAX:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"request exceeds the {MESSAGE_LENGTH_MAX}-byte limit")
        loop = asyncio.get_running_loop()
        async with self._lock:
            stream_id = self._next_id
            self._next_id += 2
            fut: asyncio.Future[bytes | None] = loop.create_future()
            # A waiter failed by a lost connection after its caller gave up
            # must not leave an unretrieved exception behind.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._waiters[stream_id] = fut
            writer = self._writer
            if writer is None:
                self._waiters.pop(stream_id, None)
                raise RpcError(Code.UNAVAILABLE, f"ttRPC connection to unix://{self.path} was lost")
            try:
                writer.write(_frame(stream_id, _TYPE_REQUEST, body))
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                self._waiters.pop(stream_id, None)
                self._writer = None
                raise RpcError(Code.UNAVAILABLE, f"ttRPC connection lost: {exc}") from exc
        started = time.monotonic()
        try:
            raw = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            self._waiters.pop(stream_id, None)
            raise RpcError(
                Code.DEADLINE_EXCEEDED,
                f"/{service}/{method}: no answer in {time.monotonic() - started:.1f}s",
            ) from exc
        if raw is None:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"response exceeds the {MESSAGE_LENGTH_MAX}-byte limit")
        resp = ttrpc_pb2.Response()
        try:
            resp.ParseFromString(raw)
        except DecodeError as exc:
            raise RpcError(Code.INTERNAL, "malformed ttRPC response") from exc
        if resp.HasField("status") and resp.status.code != Code.OK:
            raise RpcError(resp.status.code, resp.status.message)
        out = response_type()
        try:
            out.ParseFromString(resp.payload)
        except DecodeError as exc:
            raise RpcError(Code.INTERNAL, f"/{service}/{method}: malformed response message") from exc
        return out
