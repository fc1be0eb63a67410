"""A TCP listener on 127.0.0.1 that accepts connections and never answers
(a registry or KBS that hangs)."""

from __future__ import annotations

import socket
import threading

__all__ = ["StallServer"]


class StallServer:
    """Accepts on ``127.0.0.1:port`` and holds every connection, silent, until :meth:`close`."""

    def __init__(self, backlog: int = 64) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()
