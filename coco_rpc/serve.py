"""Run services until a signal arrives, on whichever transport the address names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from coco_rpc.address import parse_address
from coco_rpc.limits import ServerLimits
from coco_rpc.service import Service
from coco_rpc.ttrpc import TtrpcServer

if TYPE_CHECKING:
    from coco_rpc.grpc_transport import GrpcServer

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(
    address: str,
    services: Sequence[Service],
    *,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    limits: ServerLimits | None = None,
) -> None:
    """Serve ``services`` on ``address`` (``unix://`` → ttRPC, ``host:port`` →
    gRPC) until SIGTERM/SIGINT/SIGHUP or until ``stop`` is set. ``limits``
    bounds the ttRPC server (defaults: :class:`ServerLimits`)."""
    addr = parse_address(address)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if addr.kind == "unix":
        server: TtrpcServer | GrpcServer = TtrpcServer(addr.target, services, limits=limits)
    else:
        # grpcio costs ~0.1-0.3 s of start-up: only a gRPC address pays for it
        from coco_rpc.grpc_transport import GrpcServer

        server = GrpcServer(addr.target, services)
    await server.start()
    try:
        if on_ready is not None:
            await on_ready()
        await stop.wait()
    finally:
        log.info("shutting down %s", address)
        await server.close()
