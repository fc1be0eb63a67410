"""In-process KBS fixtures: the real aiohttp app on a 127.0.0.1 port."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kbs.app import KbsState, build_state
from kbs.config import parse_config
from kbs.server import make_app
from kbs_protocol.jws import sign
from kbs_protocol.policies import builtin_policy


@dataclass
class Kbs:
    url: str
    state: KbsState
    admin_key: ed25519.Ed25519PrivateKey
    tmp: Path

    def token(self, *, role: str = "admin", lifetime: int = 600, key: ed25519.Ed25519PrivateKey | None = None,
              **over: Any) -> str:  # fmt: skip
        now = int(time.time())
        claims = {"iss": "tests", "aud": ["KBS"], "role": role, "iat": now, "exp": now + lifetime, **over}
        return sign(claims, key or self.admin_key, alg="EdDSA")

    def admin_headers(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}

    async def seed(self, http: httpx.AsyncClient, path: str, data: bytes) -> None:
        r = await http.post(f"{self.url}/kbs/v0/resource/{path}", content=data, headers=self.admin_headers())
        assert r.status_code == 200, r.text

    async def policy(self, http: httpx.AsyncClient, name_or_rego: str) -> None:
        rego = builtin_policy(name_or_rego) if "\n" not in name_or_rego else name_or_rego.encode()
        body = {"policy": base64.urlsafe_b64encode(rego).rstrip(b"=").decode()}
        r = await http.post(f"{self.url}/kbs/v0/resource-policy", json=body, headers=self.admin_headers())
        assert r.status_code == 200, r.text


def config_doc(tmp: Path, admin_pub: Path, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "http_server": {"sockets": ["127.0.0.1:0"], "insecure_http": True, "payload_request_size": 1},
        "admin": {
            "authorization_mode": "AuthenticatedAuthorization",
            "authentication": {
                "bearer_jwt": {
                    "identity_providers": [
                        {"issuer": "tests", "audience": "KBS", "public_key_uri": str(admin_pub)}
                    ]
                }
            },
            "authorization": {
                "regex_acl": {
                    "acls": [
                        {"role": "admin", "allowed_endpoints": "^/kbs/.+$"},
                        {"role": "reader", "allowed_endpoints": "^/kbs/v0/resource-policy$"},
                    ]
                }
            },
        },
        "attestation_token": {},  # the secure default: only the built-in AS key is trusted
        "attestation_service": {"type": "coco_as_builtin"},
        "storage_backend": {"storage_type": "Memory"},
        "plugins": [{"name": "resource"}],
        # the tests attest with the unsigned sample TEEs: switched on explicitly
        "security": {"dev_verifiers": ["sample", "sampledevice"]},
    }
    for k, v in over.items():
        doc[k] = v
    return doc


def admin_material(tmp: Path) -> tuple[ed25519.Ed25519PrivateKey, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp / "admin.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return key, pub


async def start(tmp: Path, **over: Any) -> tuple[Kbs, TestServer]:
    key, pub = admin_material(tmp)
    state = await build_state(parse_config(config_doc(tmp, pub, **over), str(tmp)))
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    return Kbs(f"http://127.0.0.1:{server.port}", state, key, tmp), server


@pytest.fixture
async def kbs(tmp_path: Path) -> AsyncIterator[Kbs]:
    k, server = await start(tmp_path)
    try:
        yield k
    finally:
        await server.close()
        for c in k.state.closers:
            await c()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c
