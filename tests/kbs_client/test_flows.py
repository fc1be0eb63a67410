"""RCAR and resource flows against an httpx.MockTransport KBS written from
the reference (§2-§5). The mock stands in for the network only: the real
server is exercised in tests/kbs and test_cli.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kbs_client.errors import (
    AttestationRejected,
    PolicyDenied,
    ProtocolError,
    ResourceNotFound,
    TooLarge,
    TransportError,
    Unauthorized,
    VersionMismatch,
)
from kbs_client.rcar import Attestation, attest
from kbs_client.resources import ResourceClient, get_resource
from kbs_client.sample import SampleEvidenceSource
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol import jwe
from kbs_protocol.jcs import hash_canonical
from kbs_protocol.jws import sign

ERR = "https://github.com/confidential-containers/kbs/errors/"


def err(variant: str, detail: str, status: int = 401) -> httpx.Response:
    return httpx.Response(status, content=json.dumps({"type": ERR + variant, "detail": detail}).encode())


class FakeKbs:
    """Minimal trustee behaviour from reference §11 (sample TEE only)."""

    def __init__(self, *, hash_alg: str | None = None, token_life: int = 300) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, bytes] = {"default/key/k1": b"secret-1"}
        self.signer = ec.generate_private_key(ec.SECP256R1())
        self.hash_alg = hash_alg
        self.token_life = token_life
        self.auth_calls = 0
        self.attest_calls = 0
        self.resource_calls = 0
        self.fail_attest = 0
        self.fail_status = 401
        self.deny = False
        self.reject_tokens: set[str] = set()
        self.last_attest: dict[str, Any] = {}
        self.seen_headers: list[httpx.Headers] = []

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        self.seen_headers.append(req.headers)
        p = req.url.path
        if p == "/kbs/v0/auth" and req.method == "POST":
            self.auth_calls += 1
            body = json.loads(req.content)
            if body.get("version") != "0.4.0":
                return err("AttestationError", "Attestation error: RCAR handshake Auth failed: KBS Client "
                           f"Protocol Version Mismatch: expect =0.4.0 while the request is {body.get('version')}")  # fmt: skip
            assert body["tee"] == "sample"
            assert "sha384" in body["extra-params"]["supported-hash-algorithms"]
            sid = uuid.uuid4().hex
            nonce = base64.b64encode(os.urandom(32)).decode()
            self.sessions[sid] = {"nonce": nonce, "token": None}
            extra: Any = {"selected-hash-algorithm": self.hash_alg.upper()} if self.hash_alg else ""
            return httpx.Response(
                200,
                json={"nonce": nonce, "extra-params": extra},
                headers={"Set-Cookie": f"kbs-session-id={sid}; Expires=Wed, 21 Oct 2099 07:28:00 GMT"},
            )
        if p == "/kbs/v0/attest" and req.method == "POST":
            self.attest_calls += 1
            cookie = req.headers.get("cookie", "")
            sid = cookie.removeprefix("kbs-session-id=")
            sess = self.sessions.get(sid)
            if sess is None or self.fail_attest > 0:
                self.fail_attest -= 1
                return err(
                    "AttestationError", "Attestation error: RCAR handshake Attest failed", self.fail_status
                )
            body = json.loads(req.content)
            self.last_attest = body
            rt = body["runtime-data"]
            assert rt["nonce"] == sess["nonce"]
            alg = (self.hash_alg or "sha384").lower()
            want = hash_canonical(alg, {"additional-evidence": body["tee-evidence"]["additional_evidence"],
                                        "nonce": sess["nonce"], "tee-pubkey": rt["tee-pubkey"]})  # fmt: skip
            got = base64.b64decode(body["tee-evidence"]["primary_evidence"]["report_data"])
            if got != want:
                return err("AttestationError", "Attestation error: RCAR handshake Attest failed")
            now = int(time.time())
            claims = {"iat": now, "exp": now + self.token_life, "submods": {"cpu0": {
                "ear.veraison.annotated-evidence": {"runtime_data_claims": {"tee-pubkey": rt["tee-pubkey"]}}}}}  # fmt: skip
            tok = sign(claims, self.signer, alg="ES256")
            sess["token"] = tok
            sess["claims"] = claims
            return httpx.Response(200, json={"token": tok})
        if p.startswith("/kbs/v0/resource/") and req.method == "GET":
            self.resource_calls += 1
            authz = req.headers.get("authorization", "")
            tok = authz.removeprefix("Bearer ") if authz.startswith("Bearer ") else None
            if tok is None:
                return err("TokenNotFound", "Attestation Token not found")
            sess = next((s for s in self.sessions.values() if s["token"] == tok), None)
            if sess is None or tok in self.reject_tokens or sess["claims"]["exp"] < time.time():
                return err("TokenVerifierError", "Token verifier error")
            if self.deny:
                return err("PolicyDeny", "Access denied by policy")
            data = self.resources.get(p.removeprefix("/kbs/v0/resource/"))
            if data is None:
                return err("PluginInternalError", "Plugin internal error")
            pub = jwe.TeePubKey.from_json(
                sess["claims"]["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"][
                    "tee-pubkey"
                ]
            )
            return httpx.Response(200, json=jwe.encrypt(data, pub))
        return err("PluginNotFound", "not found", 404)


URL = "http://kbs.test"


def client(fake: FakeKbs) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(fake))


async def test_attest_and_fetch_with_cookie_and_bearer() -> None:
    fake = FakeKbs()
    async with client(fake) as http:
        att = await attest(http, URL, SampleEvidenceSource(), attempts=1)
        assert att.expires_at is not None and att.is_fresh()
        assert att.session_id and len(att.session_id) == 32
        data = await get_resource(http, URL, "kbs:///default/key/k1", token=att.token, key=att.key)
        assert data == b"secret-1"
        # the jar never re-sends the session cookie by itself
        assert "kbs-session-id" not in dict(http.cookies)
    body = fake.last_attest
    assert list(body) == ["runtime-data", "tee-evidence"]
    assert body["runtime-data"]["tee-pubkey"] == att.key.public_jwk()


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
async def test_selected_hash_algorithm_is_used(alg: str) -> None:
    fake = FakeKbs(hash_alg=alg)
    async with client(fake) as http:
        att = await attest(http, URL, SampleEvidenceSource(), attempts=1)
    rd = base64.b64decode(fake.last_attest["tee-evidence"]["primary_evidence"]["report_data"])
    assert len(rd) == {"sha256": 32, "sha512": 64}[alg]
    assert att.token


async def test_init_data_is_sent_as_toml() -> None:
    fake = FakeKbs()
    toml = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"a.txt" = "x"\n'
    async with client(fake) as http:
        await attest(http, URL, SampleEvidenceSource(), init_data_toml=toml, attempts=1)
    assert fake.last_attest["init-data"] == {"format": "toml", "body": toml}


async def test_rsa_key() -> None:
    fake = FakeKbs()
    key = TeeKeyPair.generate("RSA-OAEP-256")
    async with client(fake) as http:
        att = await attest(http, URL, SampleEvidenceSource(), key=key, attempts=1)
        assert await get_resource(http, URL, "default/key/k1", token=att.token, key=key) == b"secret-1"


async def test_retries_then_succeeds_and_version_mismatch_is_final() -> None:
    fake = FakeKbs()
    fake.fail_attest = 2
    fake.fail_status = 503  # a 5xx can heal: retried
    async with client(fake) as http:
        att = await attest(http, URL, SampleEvidenceSource(), attempts=3, retry_delay=0)
        assert att.token and fake.auth_calls == 3
        fake.fail_attest = 5
        with pytest.raises(AttestationRejected) as ei:
            await attest(http, URL, SampleEvidenceSource(), attempts=2, retry_delay=0)
        assert ei.value.error_type == "AttestationError" and ei.value.status == 503
        assert fake.auth_calls == 5
        # a 4xx is the KBS's verdict: no retry
        fake.fail_attest, fake.fail_status = 5, 401
        with pytest.raises(AttestationRejected) as ei:
            await attest(http, URL, SampleEvidenceSource(), attempts=5, retry_delay=0)
        assert ei.value.status == 401 and fake.auth_calls == 6

    async def old(req: httpx.Request) -> httpx.Response:
        return err("AttestationError", "Attestation error: RCAR handshake Auth failed: KBS Client Protocol "
                   "Version Mismatch: expect =0.3.0 while the request is 0.4.0")  # fmt: skip

    calls = 0

    async def counting(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return await old(req)

    async with httpx.AsyncClient(transport=httpx.MockTransport(counting)) as http:
        with pytest.raises(VersionMismatch):
            await attest(http, URL, SampleEvidenceSource(), attempts=5, retry_delay=0)
    assert calls == 1


async def test_malformed_challenges() -> None:
    for reply in (
        httpx.Response(200, json={"nonce": "abc", "extra-params": ""}),  # no cookie
        httpx.Response(200, json={"extra-params": ""}, headers={"Set-Cookie": "kbs-session-id=ab"}),
        httpx.Response(200, content=b"not json", headers={"Set-Cookie": "kbs-session-id=ab"}),
        httpx.Response(
            200,
            json={"nonce": "n", "extra-params": {"selected-hash-algorithm": "md5"}},
            headers={"Set-Cookie": "kbs-session-id=ab"},
        ),
    ):

        async def h(req: httpx.Request, r: httpx.Response = reply) -> httpx.Response:
            return r

        async with httpx.AsyncClient(transport=httpx.MockTransport(h)) as http:
            with pytest.raises(ProtocolError):
                await attest(http, URL, SampleEvidenceSource(), attempts=1)


async def test_error_mapping() -> None:
    fake = FakeKbs()
    async with client(fake) as http:
        att = await attest(http, URL, SampleEvidenceSource(), attempts=1)
        with pytest.raises(ResourceNotFound) as ei:
            await get_resource(http, URL, "default/key/missing", token=att.token, key=att.key)
        assert ei.value.status == 401 and ei.value.error_type == "PluginInternalError"
        fake.deny = True
        with pytest.raises(PolicyDenied):
            await get_resource(http, URL, "default/key/k1", token=att.token, key=att.key)
        with pytest.raises(Unauthorized):
            await get_resource(http, URL, "default/key/k1", token="e30.e30.AAAA", key=att.key)


async def test_resource_client_single_flight_and_reuse() -> None:
    fake = FakeKbs()
    async with client(fake) as http:
        rc = ResourceClient.attesting(http, URL, SampleEvidenceSource(), attest_attempts=1)
        results = await asyncio.gather(*(rc.get("kbs:///default/key/k1") for _ in range(20)))
        assert results == [b"secret-1"] * 20
        assert rc.handshakes == 1 and fake.auth_calls == 1
        await rc.get("default/key/k1")
        assert fake.auth_calls == 1
        # the KBS rejects the token: one re-handshake, then success
        cur = await rc.attestation()
        fake.reject_tokens.add(cur.token)
        assert await rc.get("default/key/k1") == b"secret-1"
        assert fake.auth_calls == 2 and rc.handshakes == 2


async def test_resource_client_renews_expired_token() -> None:
    fake = FakeKbs(token_life=3)  # within the 5 s freshness margin: never reused
    async with client(fake) as http:
        rc = ResourceClient.attesting(http, URL, SampleEvidenceSource(), attest_attempts=1)
        await rc.get("default/key/k1")
        await rc.get("default/key/k1")
        assert rc.handshakes == 2


async def test_resource_client_gives_up_after_attempts() -> None:
    fake = FakeKbs()
    fake.deny = True
    async with client(fake) as http:
        rc = ResourceClient.attesting(http, URL, SampleEvidenceSource(), attest_attempts=1, attempts=3)
        with pytest.raises(PolicyDenied):
            await rc.get("default/key/k1")
        assert fake.auth_calls == 3
        fake.deny = False
        with pytest.raises(ResourceNotFound):
            await rc.get("default/key/nope")


async def test_resource_client_retries_every_401_and_nothing_else() -> None:
    """As guest-components' token client: any 401 (a missing resource is trustee's 401
    PluginInternalError) drops the token and retries, ``attempts`` requests in all; a 404
    or a transport failure is final at once, with the token kept."""
    fake = FakeKbs()
    async with client(fake) as http:
        rc = ResourceClient.attesting(http, URL, SampleEvidenceSource(), attest_attempts=1, attempts=3)
        with pytest.raises(ResourceNotFound) as ei:
            await rc.get("default/key/nope")
        assert ei.value.status == 401 and fake.auth_calls == 3 and fake.resource_calls == 3
        with pytest.raises(ResourceNotFound) as ei:
            await rc.get("kbs+nope:///x/y")
        assert ei.value.status == 404 and fake.auth_calls == 4 and fake.resource_calls == 3
        assert await rc.get("default/key/k1") == b"secret-1" and fake.auth_calls == 4

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        calls = 0

        async def provider() -> Attestation:
            nonlocal calls
            calls += 1
            return Attestation.opaque("e30.e30.AAAA", TeeKeyPair.generate())

        rc = ResourceClient(http, URL, provider)
        with pytest.raises(TransportError):
            await rc.get("default/key/k1")
        assert calls == 1


async def test_resource_client_bounds_the_resource() -> None:
    fake = FakeKbs()
    fake.resources["default/key/big"] = b"x" * 5000
    async with client(fake) as http:

        async def provider() -> Attestation:
            return await attest(http, URL, SampleEvidenceSource(), attempts=1)

        rc = ResourceClient(http, URL, provider, max_resource_bytes=4096)
        assert await rc.get("default/key/k1") == b"secret-1"
        with pytest.raises(TooLarge, match="larger than 4096 bytes"):
            await rc.get("default/key/big")
        fake.resources["default/key/huge"] = b"x" * 100_000  # the JWE itself is over the read limit
        with pytest.raises(TooLarge, match="KBS answer larger than"):
            await rc.get("default/key/huge")


async def test_token_provider_mode() -> None:
    """CDH style: the token comes from elsewhere (AA GetToken), with its key."""
    fake = FakeKbs()
    async with client(fake) as http:
        outer = await attest(http, URL, SampleEvidenceSource(), attempts=1)
        pem = outer.key.private_pem()
        calls = 0

        async def provider() -> Attestation:
            nonlocal calls
            calls += 1
            return Attestation.from_token(outer.token, TeeKeyPair.from_pem(pem))

        rc = ResourceClient(http, URL, provider)
        assert await rc.get("kbs:///default/key/k1") == b"secret-1"
        assert calls == 1
