"""The same :class:`~coco_rpc.service.Service` objects served over gRPC
(upstream's development builds: AA on ``127.0.0.1:50002``, CDH on
``127.0.0.1:50000``), and a small gRPC client with the ttRPC client's shape."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from coco_rpc.errors import Code, RpcError
from coco_rpc.service import Method, Service
from coco_rpc.ttrpc import MESSAGE_LENGTH_MAX

__all__ = ["GrpcClient", "GrpcServer"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)

_OPTIONS = [
    ("grpc.max_receive_message_length", MESSAGE_LENGTH_MAX),
    ("grpc.max_send_message_length", MESSAGE_LENGTH_MAX),
]


def _handler(service: Service, method: Method) -> Any:
    path = f"/{service.name}/{method.name}"

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        if method.handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{path} is not supported")
        assert method.handler is not None
        try:
            return await method.handler(request)
        except RpcError as exc:
            await context.abort(grpc.StatusCode[Code(exc.code).name], exc.message)
        except Exception as exc:
            log.warning("%s failed: %s", path, exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"{service.error_prefix}{exc}")
        raise AssertionError("unreachable")

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=method.request_type.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )


class GrpcServer:
    """Serves services on ``host:port`` (or ``unix:/path``) with grpc.aio."""

    def __init__(self, address: str, services: Iterable[Service]) -> None:
        self.address = address
        self._server = grpc.aio.server(options=_OPTIONS)
        for s in services:
            handlers = {m.name: _handler(s, m) for m in s.methods.values()}
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(s.name, handlers),))
        self.port = 0

    async def start(self) -> None:
        self.port = self._server.add_insecure_port(self.address)
        await self._server.start()
        log.info("gRPC listening on %s", self.address)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def close(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)


class GrpcClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=_OPTIONS)

    async def __aenter__(self) -> GrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        stub = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        try:
            result: R = await stub(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RpcError(exc.code().value[0], exc.details() or "") from exc
        return result
