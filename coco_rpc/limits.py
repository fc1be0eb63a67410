"""Resource limits of the ttRPC server, and the shared request-bytes budget.

One hostile or broken peer on the socket must not be able to take the
daemon's memory, file descriptors or log: every connection counts against
:attr:`ServerLimits.max_connections`, every request body is held against one
byte budget shared by all connections from the moment its header arrives
until its response is written, and a frame must arrive in full within
:attr:`ServerLimits.frame_timeout` once its first byte has.

Idle connections are *not* closed by default: upstream's clients (the Kata
agent's CDH client, CDH's AA client) open one connection at start-up and keep
it for the life of the guest without reconnecting, so closing an idle
connection would break them. Idle connections cost a few KiB each and are
bounded by the connection cap; :attr:`ServerLimits.idle_timeout` closes them
where every client is known to reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

__all__ = ["MESSAGE_LENGTH_MAX", "REQUEST_OVERHEAD", "SMALL_REQUEST", "ByteBudget", "ServerLimits"]

#: The largest frame body either side accepts (ttrpc-rust ``MESSAGE_LENGTH_MAX``).
MESSAGE_LENGTH_MAX = 4 << 20
#: Bytes charged to the budget for each request on top of its body: the task,
#: the parsed message and the response it waits to write.
REQUEST_OVERHEAD = 4096
#: Requests up to this size may use :attr:`ServerLimits.small_request_reserve`.
SMALL_REQUEST = 64 << 10


@dataclass(frozen=True)
class ServerLimits:
    """Bounds of one ttRPC server (all connections together unless named per connection)."""

    #: Open connections; one more is accepted and closed at once.
    max_connections: int = 128
    #: Request bytes (body + :data:`REQUEST_OVERHEAD` each) in flight across all
    #: connections, from header to response written. When it is spent the
    #: server stops reading new request bodies until requests finish.
    max_in_flight_bytes: int = 32 << 20
    #: The part of that budget only requests up to :data:`SMALL_REQUEST` bytes
    #: may use, so that peers stalling large frames cannot hold back the small
    #: calls every real client makes.
    small_request_reserve: int = 8 << 20
    #: The share of that budget one connection may hold (two full-size
    #: requests), so that one peer cannot take all of it.
    max_in_flight_bytes_per_connection: int = 2 * (MESSAGE_LENGTH_MAX + REQUEST_OVERHEAD)
    #: Requests one connection may have in flight; past it that connection is
    #: not read until one finishes.
    max_in_flight_per_connection: int = 64
    #: Seconds a frame may take to arrive once its first byte has (slow or
    #: stalled senders are disconnected). ``None``: no limit.
    frame_timeout: float | None = 30.0
    #: Seconds a connection with nothing in flight may stay silent before it
    #: is closed. ``None`` (default): idle connections stay open (see module doc).
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_in_flight_per_connection < 1:
            raise ValueError("ttRPC limits: connection and in-flight counts must be at least 1")
        if self.small_request_reserve < 0:
            raise ValueError("ttRPC limits: small_request_reserve must not be negative")
        for name, value in (
            ("max_in_flight_bytes", self.max_in_flight_bytes - self.small_request_reserve),
            ("max_in_flight_bytes_per_connection", self.max_in_flight_bytes_per_connection),
        ):
            if value < MESSAGE_LENGTH_MAX + REQUEST_OVERHEAD:
                raise ValueError(
                    f"ttRPC limits: {name} must hold one full message "
                    f"({MESSAGE_LENGTH_MAX + REQUEST_OVERHEAD} bytes)"
                )
        for name in ("frame_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ttRPC limits: {name} must be positive or None")


class ByteBudget:
    """A counting budget of bytes.

    :meth:`acquire` waits until ``n`` bytes fit under its ceiling (the whole
    budget unless a lower one is given). Waiters with the same ceiling are
    served in arrival order; one with a higher ceiling (a small request) is
    not held up behind them.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: collections.deque[tuple[int, int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int, ceiling: int | None = None) -> None:
        top = self.total if ceiling is None else min(ceiling, self.total)
        if n > top:
            raise ValueError(f"{n} bytes can never fit a budget of {top}")
        if self.used + n <= top and not any(c == top for _, c, _ in self._waiters):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, top, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted, then cancelled before it was used
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            n, top, fut = entry
            if fut.done():
                self._waiters.remove(entry)
            elif self.used + n <= top:
                self._waiters.remove(entry)
                self.used += n
                fut.set_result(None)
