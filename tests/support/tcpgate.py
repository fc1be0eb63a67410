"""A TCP forwarder on 127.0.0.1 that can partition its clients from the target.

    python -m tests.support.tcpgate LISTEN_PORT TARGET_PORT

SIGUSR1 cuts: every open connection is closed and new ones are closed at once
(what a client sees when a network path to its store breaks). SIGUSR2 heals.
SIGTERM stops. Used by :class:`tests.support.fleet.TcpGate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

__all__ = ["main"]

_BUF = 65536


class _Gate:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while not self.cut:
                data = await r.read(_BUF)
                if not data:
                    break
                w.write(data)
                await w.drain()
        with contextlib.suppress(OSError):
            w.close()

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.cut:
            cw.close()
            return
        try:
            tr, tw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        self.writers.update((cw, tw))
        try:
            await asyncio.gather(self._pipe(cr, tw), self._pipe(tr, cw))
        finally:
            self.writers.discard(cw)
            self.writers.discard(tw)

    def do_cut(self) -> None:
        self.cut = True
        for w in list(self.writers):
            with contextlib.suppress(OSError):
                w.transport.abort()
        self.writers.clear()
        print("gate: cut", flush=True)

    def do_heal(self) -> None:
        self.cut = False
        print("gate: healed", flush=True)


async def _serve(listen_port: int, target_port: int) -> None:
    gate = _Gate(target_port)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, gate.do_cut)
    loop.add_signal_handler(signal.SIGUSR2, gate.do_heal)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    server = await asyncio.start_server(gate.handle, "127.0.0.1", listen_port)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tests.support.tcpgate LISTEN_PORT TARGET_PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve(int(args[0]), int(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
