"""A loopback TCP proxy that injects faults between a client and a real server.

* ``cut_blobs=N, cut_after=B``: responses to requests whose path contains
  ``/blobs/`` are cut after B bytes, N times in all (``cuts_done`` counts them).
* ``rate``: bytes/s limit on responses (to make a pull slow enough to kill).
* ``strip_range``: hide ``Range`` request headers (a registry without Range support).

Plain HTTP only (it peeks at the request line). Binds 127.0.0.1; ``stop()``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        cut_blobs: int = 0,
        cut_after: int = 0,
        rate: float = 0.0,
        strip_range: bool = False,
    ) -> None:
        self.upstream = upstream
        self.cut_blobs = cut_blobs
        self.cut_after = cut_after
        self.rate = rate
        self.strip_range = strip_range
        self.cuts_done = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._stop = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            self._conns += [client, up]
        state = {"cut": False, "sent": 0}

        def c2u() -> None:
            try:
                while True:
                    data = client.recv(65536)
                    if not data:
                        break
                    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    if line[:4] in ("GET ", "HEAD"):
                        with self._lock:
                            self.requests.append(line)
                            state["cut"] = "/blobs/" in line and self.cuts_done < self.cut_blobs
                            state["sent"] = 0
                    if self.strip_range:
                        data = data.replace(b"\r\nRange:", b"\r\nXange:").replace(
                            b"\r\nrange:", b"\r\nxange:"
                        )
                    up.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    up.shutdown(socket.SHUT_WR)

        threading.Thread(target=c2u, daemon=True).start()
        try:
            while True:
                data = up.recv(65536)
                if not data:
                    break
                if state["cut"]:
                    room = self.cut_after - state["sent"]
                    if len(data) >= room:
                        with self._lock:
                            self.cuts_done += 1
                        client.sendall(data[: max(room, 0)])
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        break
                    state["sent"] += len(data)
                client.sendall(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (client, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes the other thread's recv
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        self._stop = True
        self._sock.close()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.close()
