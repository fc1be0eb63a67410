"""Fixtures for the CDH tests.

``fake_kbs``: a small KBS resource endpoint on 127.0.0.1 (aiohttp) that
checks ``Authorization: Bearer`` against the tokens it issued and answers
with a JWE encrypted to the token's TEE key exactly as trustee does
(kbs_protocol.jwe.encrypt). It stands in for the attestation half (the AA
side is a function handing out tokens), which is covered end to end with
the real AA and reference KBS in test_e2e.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jwe import TeePubKey, encrypt


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(exp: float | None, jti: str) -> str:
    claims: dict[str, Any] = {"jti": jti}
    if exp is not None:
        claims["exp"] = int(exp)
    return f"{b64u(b'{}')}.{b64u(json.dumps(claims).encode())}.sig"


@dataclass
class FakeKbs:
    url: str = ""
    resources: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, TeePubKey] = field(default_factory=dict)  # token -> TEE public key
    revoked: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, token)
    issued: int = 0
    token_lifetime: float | None = 300.0
    clock: Callable[[], float] = time.time

    async def issue(self) -> bytes:
        """What AA's GetToken("kbs") answers: a token bound to a fresh key pair."""
        self.issued += 1
        key = TeeKeyPair.generate()
        exp = self.clock() + self.token_lifetime if self.token_lifetime is not None else None
        token = make_jwt(exp, f"t{self.issued}")
        self.tokens[token] = key.pubkey
        return json.dumps({"token": token, "tee_keypair": key.private_pem()}).encode()

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        self.requests.append((request.path_qs, token))

        def err(kind: str, status: int = 401) -> web.Response:
            body = {"type": f"https://github.com/confidential-containers/kbs/errors/{kind}", "detail": kind}
            return web.Response(status=status, text=json.dumps(body))

        if not auth.startswith("Bearer "):
            return err("TokenNotFound")
        if token not in self.tokens or token in self.revoked:
            return err("TokenVerifierError")
        path = request.match_info["tail"]
        if not request.path.startswith("/kbs/v0/resource/"):
            return err("PluginNotFound", 404)
        if path not in self.resources:
            return err("PluginInternalError")
        jwe = encrypt(self.resources[path], self.tokens[token])
        return web.Response(status=200, text=json.dumps(jwe), content_type="application/json")


@contextlib.asynccontextmanager
async def serve_fake_kbs(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[FakeKbs]:
    kbs = FakeKbs()
    app = web.Application()
    app.router.add_get("/kbs/v0/{plugin}/{tail:.*}", kbs.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kbs.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield kbs
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_kbs() -> AsyncIterator[FakeKbs]:
    async with serve_fake_kbs() as kbs:
        yield kbs


class DictResources:
    """A resource getter over a dict (for units that only need *some* getter)."""

    def __init__(self, items: dict[str, bytes] | None = None) -> None:
        self.items = dict(items or {})
        self.calls: list[str] = []

    async def get_resource(self, uri: str) -> bytes:
        from cdh.errors import NoSuchResource

        self.calls.append(uri)
        if uri not in self.items:
            raise NoSuchResource(f"no {uri}")
        return self.items[uri]

    async def close(self) -> None:
        pass


from tests.cdh.inproc import env  # noqa: E402,F401 (fixture shared by test_rpc and test_clients)
from tests.support.registry import registry  # noqa: E402,F401 (real docker-registry fixture)
