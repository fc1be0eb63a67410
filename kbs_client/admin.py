"""The KBS admin API (reference §6): resources, policies, reference values.

Two ways to authenticate, matching the two kbs-client generations:
:class:`BearerToken` (trustee >= v0.21: a token file, sent verbatim) and
:class:`Ed25519Signer` (older kbs-client: it signs a 2 h EdDSA JWT itself).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_common.b64 import b64_encode, b64url_decode, b64url_encode
from kbs_protocol.errors import TokenError
from kbs_protocol.jws import sign
from kbs_protocol.uri import parse_resource_path

from . import _http
from .errors import KbsClientError, ProtocolError

__all__ = [
    "AdminAuth",
    "AdminClient",
    "Anonymous",
    "BearerToken",
    "Ed25519Signer",
    "sample_reference_value_message",
]

MAX_ADMIN_TOKEN_BYTES = 64 * 1024


class AdminAuth(Protocol):
    def authorization(self) -> str | None:
        """The ``Authorization`` header value, or None for anonymous calls."""
        ...


@dataclass(frozen=True)
class Anonymous:
    def authorization(self) -> str | None:
        return None


@dataclass(frozen=True, repr=False)
class BearerToken:
    token: str

    @classmethod
    def from_bytes(cls, raw: bytes, path: str = "admin token file") -> BearerToken:
        """A compact JWS token. The errors never quote the content: the wrong file
        passed here is often a private key."""
        if len(raw) > MAX_ADMIN_TOKEN_BYTES:
            raise TokenError(f"--admin-token-file {path}: over {MAX_ADMIN_TOKEN_BYTES} bytes, not a token")
        if b"-----BEGIN" in raw:
            kind = "private key" if b"PRIVATE KEY" in raw else "certificate or public key"
            raise TokenError(
                f"--admin-token-file {path} contains a PEM {kind}, not a JWT; "
                "pass a private key with --auth-private-key, or mint a token"
            )
        tok = raw.decode("utf-8", "replace").strip()
        if not tok:
            raise TokenError(f"--admin-token-file {path} is empty")
        parts = tok.split(".")
        if len(parts) != 3 or not all(parts[:2]) or not all(_is_b64url(x) for x in parts):
            raise TokenError(
                f"--admin-token-file {path} does not hold a JWT (want header.payload.signature "
                "in base64url on one line)"
            )
        return cls(tok)

    def authorization(self) -> str | None:
        return f"Bearer {self.token}"

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


def _is_b64url(s: str) -> bool:
    return all(c in _B64URL for c in s)


class Ed25519Signer:
    """Signs ``{iat, nbf, exp=now+lifetime}`` with EdDSA, as kbs-client <= v0.20 did."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, *, lifetime_s: int = 7200) -> None:
        self._key = key
        self._lifetime = lifetime_s

    @classmethod
    def from_pem(cls, pem: bytes) -> Ed25519Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise TokenError("auth private key is not an unencrypted PEM") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise TokenError("auth private key must be Ed25519")
        return cls(key)

    def authorization(self) -> str | None:
        now = int(time.time())
        tok = sign({"iat": now, "nbf": now, "exp": now + self._lifetime}, self._key, alg="EdDSA")
        return f"Bearer {tok}"

    def __repr__(self) -> str:
        return "Ed25519Signer(<redacted>)"


def sample_reference_value_message(values: dict[str, Any]) -> dict[str, str]:
    """The RVPS message for the ``sample`` extractor (payload: padded std base64)."""
    payload = json.dumps(values, separators=(",", ":")).encode()
    return {"version": "0.1.0", "type": "sample", "payload": b64_encode(payload)}


class AdminClient:
    def __init__(
        self, http: httpx.AsyncClient, base_url: str, auth: AdminAuth, *, timeout: float = 60.0
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = auth
        self._timeout = timeout

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None, ctype: str = ""
    ) -> _http.Reply:
        headers: dict[str, str] = {}
        authz = self._auth.authorization()
        if authz:
            headers["Authorization"] = authz
        if ctype:
            headers["Content-Type"] = ctype
        reply = await _http.request(
            self._http,
            method,
            self._base + path,
            json_body=json_body,
            content=content,
            headers=headers,
            timeout=self._timeout,
        )
        if reply.status != 200:
            raise _http.kbs_error(reply, "admin")
        return reply

    async def set_resource(self, path: str, data: bytes) -> None:
        repo, typ, tag = parse_resource_path(path)
        await self._call(
            "POST", f"/kbs/v0/resource/{repo}/{typ}/{tag}", content=data, ctype="application/octet-stream"
        )

    async def delete_resource(self, path: str) -> None:
        repo, typ, tag = parse_resource_path(path)
        await self._call("DELETE", f"/kbs/v0/resource/{repo}/{typ}/{tag}")

    async def set_resource_policy(self, rego: bytes) -> None:
        await self._call("POST", "/kbs/v0/resource-policy", json_body={"policy": b64url_encode(rego)})

    async def list_resource_policies(self) -> list[str]:
        doc = (await self._call("GET", "/kbs/v0/resource-policy")).json()
        if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
            raise ProtocolError("resource-policy list is not a JSON array of strings")
        return doc

    async def get_resource_policy(self, policy_id: str = "resource-policy") -> bytes:
        """The stored resource policy text (a coco-py KBS extension; trustee lists ids only)."""
        return await self._get_policy("resource-policy", policy_id)

    async def get_attestation_policy(self, policy_id: str = "default_cpu") -> bytes:
        """A stored (or built-in) attestation policy text (coco-py KBS extension)."""
        return await self._get_policy("attestation-policy", policy_id)

    async def _get_policy(self, kind: str, policy_id: str) -> bytes:
        if not policy_id or "/" in policy_id or policy_id in (".", ".."):
            raise KbsClientError("invalid policy id")
        doc = (await self._call("GET", f"/kbs/v0/{kind}/{policy_id}")).json()
        pol = doc.get("policy") if isinstance(doc, dict) else None
        if not isinstance(pol, str):
            raise ProtocolError(f"{kind} answer has no policy (does this KBS serve policy read-back?)")
        try:
            return b64url_decode(pol, allow_padding=False)
        except ValueError as exc:
            raise ProtocolError(f"{kind} answer is not base64url") from exc

    async def set_attestation_policy(
        self, rego: bytes, *, policy_id: str = "default_cpu", policy_type: str = "rego"
    ) -> None:
        body = {"type": policy_type, "policy_id": policy_id, "policy": b64url_encode(rego)}
        await self._call("POST", "/kbs/v0/attestation-policy", json_body=body)

    async def register_reference_value(self, message: dict[str, Any]) -> None:
        await self._call("POST", "/kbs/v0/reference-value", json_body=message)

    async def set_sample_reference_value(self, name: str, value: Any) -> None:
        await self.register_reference_value(sample_reference_value_message({name: value}))

    async def get_reference_value(self, ref_id: str) -> str:
        if not ref_id or ".." in ref_id.split("/"):
            raise KbsClientError("invalid reference value id")
        reply = await self._call("GET", "/kbs/v0/reference-value/" + ref_id.lstrip("/"))
        return reply.body.decode("utf-8", "replace")
