"""One client type for both transports, chosen by the address."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

from google.protobuf.message import Message

from coco_rpc.address import parse_address
from coco_rpc.ttrpc import TtrpcClient

if TYPE_CHECKING:
    from coco_rpc.grpc_transport import GrpcClient

__all__ = ["RpcClient", "connect"]

R = TypeVar("R", bound=Message)


class RpcClient(Protocol):
    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
    ) -> R: ...

    async def close(self) -> None: ...


def connect(address: str) -> TtrpcClient | GrpcClient:
    """``unix://...`` gives a ttRPC client; ``host:port`` a gRPC client.
    Connection happens lazily on the first call."""
    addr = parse_address(address)
    if addr.kind == "unix":
        return TtrpcClient(addr.target)
    from coco_rpc.grpc_transport import GrpcClient  # grpcio only for a gRPC address (start-up cost)

    return GrpcClient(addr.target)
