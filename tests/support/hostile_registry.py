"""A hostile OCI registry on 127.0.0.1: correct by default, then lies on request.

It serves one small valid image (``evil/app:1``: a gzip layer holding
``/hello``, its config and manifest) over plain HTTP from raw sockets, so a
test controls every byte: headers, framing, pacing, when to close.

A *fault* is set per request kind (``ping``, ``token``, ``manifest``,
``config``, ``layer``) with :meth:`HostileRegistry.fault`; ``times`` says how
many GET requests of that kind it hits (``None``: all; HEAD is always answered
normally). Faults:

* ``encoding``: the body is ``body`` sent with ``Content-Encoding: coding``
  (the test supplies the bomb);
* ``status``: answer ``status`` with ``body`` (e.g. a 500 with a bomb body);
* ``short``: the connection closes after half the body, ``Content-Length`` having
  promised ``extra`` (default 1000) bytes more than the whole;
* ``stall``: send ``after`` bytes of the body, then hold the connection silently;
* ``trickle``: send the body one byte every ``interval`` seconds;
* ``retry_after``: 503 with ``Retry-After: value``.

``token_auth=True`` makes the ping answer a Bearer challenge whose realm is
this server's ``/token``. Every request is recorded (``requests``: method,
path, headers) for assertions. ``layer_blob``/``layer_size``/``diff_id``
replace the layer (e.g. a bomb; ``declared_size`` lies about its size and
``hold_after_layer`` keeps the connection open after sending it).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "HostileRegistry", "Request"]

REPO = "evil/app"


@dataclass
class Fault:
    kind: str
    times: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


def _sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def small_layer(files: dict[str, bytes] | None = None) -> bytes:
    """An uncompressed layer tar with ``files`` (default: ``hello``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (files or {"hello": b"hello from a hostile registry\n"}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class HostileRegistry:
    def __init__(
        self,
        *,
        token_auth: bool = False,
        layer_tar: bytes | None = None,
        layer_blob: bytes | None = None,
        layer_media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
        declared_size: int | None = None,
        hold_after_layer: bool = False,
    ) -> None:
        tar = layer_tar if layer_tar is not None else small_layer()
        self.layer = layer_blob if layer_blob is not None else gzip.compress(tar, mtime=0)
        self.diff_id = _sha(tar)
        self.hold_after_layer = hold_after_layer
        self.config = json.dumps(
            {
                "architecture": _arch(),
                "os": "linux",
                "config": {"Cmd": ["/hello"]},
                "rootfs": {"type": "layers", "diff_ids": [self.diff_id]},
            }
        ).encode()
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": layer_media_type,
                        "digest": _sha(self.layer),
                        "size": declared_size if declared_size is not None else len(self.layer),
                    }
                ],
            }
        ).encode()
        self.manifest_digest = _sha(self.manifest)
        self.token_auth = token_auth
        self.faults: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.ref = f"{self.host}/{REPO}:1"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    # ------------------------------------------------------------------ control
    def fault(self, where: str, kind: str, times: int | None = None, **params: Any) -> None:
        self.faults[where] = Fault(kind, times, params)

    def count(self, where: str) -> int:
        return sum(1 for r in self.requests if _kind(self, r.path) == where)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()

    # ------------------------------------------------------------------ server
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            while not self._stop.is_set():
                line = f.readline(65536)
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = f.readline(65536)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                with self._lock:
                    self.requests.append(Request(method, path, headers))
                if not self._answer(c, method, path, headers):
                    return
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                c.close()

    def _take_fault(self, where: str) -> Fault | None:
        with self._lock:
            fl = self.faults.get(where)
            if fl is None:
                return None
            if fl.times is not None:
                if fl.times <= 0:
                    return None
                fl.times -= 1
            return fl

    def _normal(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        where = _kind(self, path)
        if where == "ping":
            if self.token_auth and "authorization" not in headers:
                realm = f'Bearer realm="http://{self.host}/token",service="evil"'
                return 401, {"WWW-Authenticate": realm}, b'{"errors":[]}'
            return 200, {"Content-Type": "application/json"}, b"{}"
        if where == "token":
            return 200, {"Content-Type": "application/json"}, b'{"token":"t0k3n","expires_in":300}'
        if self.token_auth and headers.get("authorization") != "Bearer t0k3n":
            realm = f'Bearer realm="http://{self.host}/token",service="evil"'
            return 401, {"WWW-Authenticate": realm}, b"{}"
        if where == "manifest":
            return (
                200,
                {
                    "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                    "Docker-Content-Digest": self.manifest_digest,
                },
                self.manifest,
            )
        if where in ("config", "layer"):
            body = self.config if where == "config" else self.layer
            rng = headers.get("range", "")
            if rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                total = len(body)
                return 206, {"Content-Range": f"bytes {start}-{total - 1}/{total}"}, body[start:]
            return 200, {"Content-Type": "application/octet-stream"}, body
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NAME_UNKNOWN"}]}'

    def _answer(self, c: socket.socket, method: str, path: str, headers: dict[str, str]) -> bool:
        where = _kind(self, path)
        status, hdrs, body = self._normal(method, path, headers)
        faultable = method != "HEAD" and (status in (200, 206) or where == "ping")
        fl = self._take_fault(where) if faultable else None
        if fl is None:
            if where == "layer" and self.hold_after_layer and method == "GET":
                _send(c, status, hdrs, body)  # no length: the body "goes on" while the connection is open
                self._stop.wait(600)
                return False
            _send(c, status, hdrs, body if method != "HEAD" else b"", length=len(body))
            return True
        p = fl.params
        if fl.kind == "encoding":
            hdrs["Content-Encoding"] = p["coding"]
            data = p["body"]
            _send(c, status, hdrs, data if method != "HEAD" else b"", length=len(data))
            return True
        if fl.kind == "status":
            hdrs = {"Content-Type": "application/json", **p.get("headers", {})}
            data = p.get("body", b"")
            _send(c, p["status"], hdrs, data if method != "HEAD" else b"", length=len(data))
            return True
        if fl.kind == "retry_after":
            _send(c, 503, {"Retry-After": str(p["value"])}, b"", length=0)
            return True
        if method == "HEAD":
            _send(c, status, hdrs, b"", length=len(body))
            return True
        if fl.kind == "short":
            hdrs["Content-Length"] = str(len(body) + p.get("extra", 1000))
            _send(c, status, hdrs, body[: max(1, len(body) // 2)])
            return False
        if fl.kind == "stall":
            hdrs["Content-Length"] = str(len(body))
            _send(c, status, hdrs, body[: p.get("after", 1)])
            self._stop.wait(p.get("hold", 600))
            return False
        if fl.kind == "trickle":
            hdrs["Content-Length"] = str(len(body))
            _send(c, status, hdrs, b"")
            for i in range(len(body)):
                if self._stop.wait(p.get("interval", 1.0)):
                    return False
                c.sendall(body[i : i + 1])
            return True
        raise ValueError(f"unknown fault {fl.kind}")


def _send(
    c: socket.socket, status: int, headers: dict[str, str], body: bytes, *, length: int | None = None
) -> None:
    lines = [f"HTTP/1.1 {status} X"]
    h = dict(headers)
    if length is not None:
        h["Content-Length"] = str(length)
    lines += [f"{k}: {v}" for k, v in h.items()]
    c.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _kind(reg: HostileRegistry, path: str) -> str:
    p = path.split("?", 1)[0]
    if p in ("/v2/", "/v2"):
        return "ping"
    if p == "/token":
        return "token"
    if "/manifests/" in p:
        return "manifest"
    if "/blobs/" in p:
        digest = p.rsplit("/", 1)[-1]
        return "config" if digest == _sha(reg.config) else "layer"
    return "other"


def _arch() -> str:
    import platform

    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def wait_until(pred: Any, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False
