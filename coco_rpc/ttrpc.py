"""ttRPC over Unix sockets: the framing containerd/ttrpc and ttrpc-rust speak.

A frame is a 10-byte header (u32 BE payload length, u32 BE stream id, u8
type: 1 request, 2 response, u8 flags) followed by a protobuf
``ttrpc.Request`` or ``ttrpc.Response``. Messages above 4 MiB are refused in
both directions. Clients use odd stream ids; requests on one connection may
be answered out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from coco_rpc.errors import Code, RpcError
from coco_rpc.protos import ttrpc_pb2
from coco_rpc.service import Service

__all__ = ["MAX_IN_FLIGHT_PER_CONNECTION", "MESSAGE_LENGTH_MAX", "TtrpcClient", "TtrpcServer"]

log = logging.getLogger(__name__)

MESSAGE_LENGTH_MAX = 4 << 20
#: Requests one connection may have in flight; past it the server stops
#: reading that connection until one finishes (backpressure, bounded memory).
MAX_IN_FLIGHT_PER_CONNECTION = 64
_HEADER = struct.Struct(">IIBB")
_TYPE_REQUEST = 1
_TYPE_RESPONSE = 2

R = TypeVar("R", bound=Message)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes | None]:
    """Read one frame. The body is ``None`` when it was over the size limit
    (its bytes are consumed and discarded so the stream stays in sync)."""
    header = await reader.readexactly(_HEADER.size)
    length, stream_id, mtype, flags = _HEADER.unpack(header)
    if length > MESSAGE_LENGTH_MAX:
        remaining = length
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
        return stream_id, mtype, flags, None
    return stream_id, mtype, flags, await reader.readexactly(length)


def _frame(stream_id: int, mtype: int, body: bytes) -> bytes:
    return _HEADER.pack(len(body), stream_id, mtype, 0) + body


class TtrpcServer:
    """Serves one or more :class:`Service` objects on a Unix socket."""

    def __init__(self, path: str | os.PathLike[str], services: Iterable[Service]) -> None:
        self.path = Path(path)
        self._services = {s.name: s for s in services}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket() or not self.path.exists():
                self.path.unlink()
        self._server = await asyncio.start_unix_server(self._connection, path=str(self.path))
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
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT_PER_CONNECTION)
        pending: set[asyncio.Task[None]] = set()
        self._writers.add(writer)
        try:
            while True:
                try:
                    stream_id, mtype, _flags, body = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                if mtype != _TYPE_REQUEST:
                    log.warning("ttRPC: ignoring frame of type %d on stream %d", mtype, stream_id)
                    continue
                await in_flight.acquire()
                task = asyncio.create_task(self._handle(stream_id, body, writer, lock))
                pending.add(task)
                self._tasks.add(task)
                task.add_done_callback(pending.discard)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _t: in_flight.release())
        finally:
            for t in pending:
                t.cancel()
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(
        self, stream_id: int, body: bytes | None, writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        resp = ttrpc_pb2.Response()
        try:
            resp.payload = await self._dispatch(body)
            resp.status.code = Code.OK
        except RpcError as exc:
            resp.status.code = int(exc.code)
            resp.status.message = exc.message
        out = resp.SerializeToString()
        if len(out) > MESSAGE_LENGTH_MAX:
            resp = ttrpc_pb2.Response()
            resp.status.code = Code.RESOURCE_EXHAUSTED
            resp.status.message = f"response of {len(out)} bytes exceeds the {MESSAGE_LENGTH_MAX}-byte limit"
            out = resp.SerializeToString()
        async with lock:
            writer.write(_frame(stream_id, _TYPE_RESPONSE, out))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _dispatch(self, body: bytes | None) -> bytes:
        if body is None:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"message exceeds the {MESSAGE_LENGTH_MAX}-byte limit")
        req = ttrpc_pb2.Request()
        try:
            req.ParseFromString(body)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, "malformed ttRPC request") from exc
        path = f"/{req.service}/{req.method}"
        service = self._services.get(req.service)
        method = service.methods.get(req.method) if service else None
        if service is None or method is None or method.handler is None:
            raise RpcError(Code.NOT_FOUND, f"{path} is not supported")
        msg = method.request_type()
        try:
            msg.ParseFromString(req.payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{path}: malformed request message") from exc
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        try:
            result = await asyncio.wait_for(method.handler(msg), timeout)
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
