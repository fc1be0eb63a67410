"""GetToken: the RCAR handshake with composite evidence, checked by a fake KBS
(httpx.MockTransport) that recomputes the report-data binding independently
(rfc8785 + hashlib, not kbs_client's code), and GetToken("coco_as")."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.aa.agent import AttestationAgent
from attestation.aa.config import AaConfig, CocoAsConfig, KbsTokenConfig
from attestation.aa.errors import AaTokenError
from attestation.initdata import parse_initdata
from attestation.sample import SampleAttester, SampleDeviceAttester

NONCE = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
URL = "http://kbs.test:8080"


def _b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _fake_token() -> str:
    return ".".join(
        [
            _b64u(b'{"alg":"ES256","typ":"JWT"}'),
            _b64u(json.dumps({"exp": 4102444800}).encode()),
            _b64u(b"sig"),
        ]
    )


class FakeKbs:
    """Checks the handshake the way trustee's KBS + sample verifier do."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attests: list[dict[str, Any]] = []
        self.auths: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/kbs/v0/auth":
            body = json.loads(request.content)
            self.auths.append(body)
            if self.fail_first:
                self.fail_first -= 1
                return httpx.Response(503, json={"type": "x/AttestationError", "detail": "busy"})
            return httpx.Response(
                200,
                json={"nonce": NONCE, "extra-params": ""},
                headers={
                    "Set-Cookie": "kbs-session-id=0123456789abcdef0123456789abcdef; Expires=Wed, 01 Jan 2098"
                },
            )
        if request.url.path == "/kbs/v0/attest":
            if request.headers.get("cookie") != "kbs-session-id=0123456789abcdef0123456789abcdef":
                return httpx.Response(401, json={"type": "x/AttestationError", "detail": "no session"})
            body = json.loads(request.content)
            self.attests.append(body)
            self.problems = []
            self._check(body)
            if self.problems:
                return httpx.Response(
                    401, json={"type": "x/AttestationError", "detail": "; ".join(self.problems)}
                )
            return httpx.Response(200, json={"token": _fake_token()})
        return httpx.Response(404)

    def _check(self, body: dict[str, Any]) -> None:
        rt = body["runtime-data"]
        if rt["nonce"] != NONCE:
            self.problems.append("nonce")
        key = rt["tee-pubkey"]
        additional = body["tee-evidence"]["additional_evidence"]
        if not isinstance(additional, str):
            self.problems.append("additional_evidence is not a string")
            return
        dev_digest = hashlib.sha384(rfc8785.dumps({"nonce": NONCE, "tee-pubkey": key})).digest()
        if additional:
            for tee, ev in json.loads(additional).items():
                if tee == "sampledevice":
                    ok = base64.b64decode(ev["report_data"]) == dev_digest
                else:  # the recording "nvidia" stand-in: nonce = first 32 bytes
                    ok = ev["device_evidence_list"][0]["nonce"] == dev_digest[:32].hex()
                if not ok:
                    self.problems.append(f"device {tee} binding")
        primary_digest = hashlib.sha384(
            rfc8785.dumps({"additional-evidence": additional, "nonce": NONCE, "tee-pubkey": key})
        ).digest()
        prim = body["tee-evidence"]["primary_evidence"]
        if prim.get("svn") != "1" or base64.b64decode(prim["report_data"]) != primary_digest:
            self.problems.append("primary binding")


def _factory(kbs: FakeKbs) -> Callable[[str, str | None], httpx.AsyncClient]:
    def make(url: str, cert: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(kbs.handler))

    return make


def _pub_matches_jwk(pem: str, jwk: dict[str, str]) -> bool:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        n = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        return jwk["x"] == _b64u(n.x.to_bytes(size, "big")) and jwk["y"] == _b64u(n.y.to_bytes(size, "big"))
    assert isinstance(key, rsa.RSAPrivateKey)
    n2 = key.public_key().public_numbers()
    return jwk["n"] == _b64u(n2.n.to_bytes((n2.n.bit_length() + 7) // 8, "big"))


async def test_kbs_token_without_devices() -> None:
    kbs = FakeKbs()
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL)), SampleAttester(), devices=[], http_factory=_factory(kbs)
    )
    out = json.loads(await agent.get_token("kbs"))
    assert kbs.problems == []
    assert set(out) == {"token", "tee_keypair"}
    assert out["token"] == _fake_token()
    assert out["tee_keypair"].startswith("-----BEGIN PRIVATE KEY-----")  # EC: PKCS#8
    (body,) = kbs.attests
    assert body["tee-evidence"]["additional_evidence"] == ""
    assert "init-data" not in body or body["init-data"] is None
    assert body["runtime-data"]["tee-pubkey"]["crv"] == "P-256"
    assert _pub_matches_jwk(out["tee_keypair"], body["runtime-data"]["tee-pubkey"])
    assert kbs.auths[0] == {
        "version": "0.4.0",
        "tee": "sample",
        "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]},
    }


async def test_kbs_token_composite_with_sampledevice_and_initdata() -> None:
    kbs = FakeKbs()
    toml = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = "x"\n'
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL, tee_key_algorithm="ECDH-ES+A256KW-P521")),
        SampleAttester(),
        devices=[SampleDeviceAttester()],
        init_data=parse_initdata(toml),
        http_factory=_factory(kbs),
    )
    out = json.loads(await agent.get_token("kbs"))
    assert kbs.problems == []
    (body,) = kbs.attests
    assert body["init-data"] == {"format": "toml", "body": toml.decode()}
    assert json.loads(body["tee-evidence"]["additional_evidence"])["sampledevice"]["svn"] == "2"
    assert body["runtime-data"]["tee-pubkey"]["crv"] == "P-521"
    assert _pub_matches_jwk(out["tee_keypair"], body["runtime-data"]["tee-pubkey"])


async def test_kbs_token_rsa_key() -> None:
    kbs = FakeKbs()
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL, tee_key_algorithm="RSA-OAEP-256")),
        SampleAttester(),
        devices=[],
        http_factory=_factory(kbs),
    )
    out = json.loads(await agent.get_token("kbs"))
    assert out["tee_keypair"].startswith("-----BEGIN RSA PRIVATE KEY-----")  # RSA: PKCS#1
    assert _pub_matches_jwk(out["tee_keypair"], kbs.attests[0]["runtime-data"]["tee-pubkey"])


async def test_each_get_token_is_a_fresh_handshake() -> None:
    kbs = FakeKbs()
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL)), SampleAttester(), devices=[], http_factory=_factory(kbs)
    )
    a = json.loads(await agent.get_token("kbs"))
    b = json.loads(await agent.get_token("kbs"))
    assert len(kbs.auths) == 2 and a["tee_keypair"] != b["tee_keypair"]


async def test_kbs_retries_then_succeeds_or_gives_up() -> None:
    kbs = FakeKbs(fail_first=2)
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL)),
        SampleAttester(),
        devices=[],
        http_factory=_factory(kbs),
        kbs_retry_delay=0,
    )
    await agent.get_token("kbs")
    assert len(kbs.auths) == 3
    dead = FakeKbs(fail_first=100)
    agent2 = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL)),
        SampleAttester(),
        devices=[],
        http_factory=_factory(dead),
        kbs_retry_delay=0,
    )
    with pytest.raises(AaTokenError, match="KBS handshake"):
        await agent2.get_token("kbs")
    assert len(dead.auths) == 5


async def test_token_errors() -> None:
    agent = AttestationAgent(AaConfig(), SampleAttester(), devices=[])
    with pytest.raises(AaTokenError, match="kbs token config not configured in config file"):
        await agent.get_token("kbs")
    # an unusable URL is accepted at start-up (as upstream) and refused at use
    for url in ("", "ftp://kbs", "kbs.example:8080"):
        odd = AttestationAgent(AaConfig(kbs=KbsTokenConfig(url)), SampleAttester(), devices=[])
        with pytest.raises(AaTokenError, match="is not an http"):
            await odd.get_token("kbs")
    with pytest.raises(AaTokenError, match="no CoCo AS"):
        await agent.get_token("coco_as")
    with pytest.raises(AaTokenError, match="unsupported token type"):
        await agent.get_token("KBS")


async def test_coco_as_token() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/attestation"
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=b"eyJ.token.body")

    def make(url: str, cert: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    agent = AttestationAgent(
        AaConfig(coco_as=CocoAsConfig("http://as.test:8000")), SampleAttester(), devices=[], http_factory=make
    )
    assert await agent.get_token("coco_as") == b"eyJ.token.body"
    (body,) = seen
    assert body["policy_ids"] == []
    (req,) = body["verification_requests"]
    assert req["tee"] == "sample" and "=" not in req["evidence"]
    ev = json.loads(base64.urlsafe_b64decode(req["evidence"] + "=" * (-len(req["evidence"]) % 4)))
    assert ev == {"svn": "1", "report_data": ""}


def test_additional_evidence_string_matches_reference_case_2() -> None:
    """kbs-protocol.md §3 case 2: the exact string and the primary digest it yields."""
    from attestation.aa.agent import additional_evidence_string

    a = additional_evidence_string({"sampledevice": {"svn": "2", "report_data": "X"}})
    assert a == '{"sampledevice":{"svn":"2","report_data":"X"}}'
    assert additional_evidence_string({}) == ""
    k = {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ECDH-ES+A256KW",
        "x": "n62Erq4Iu-9_AQAU2CzvagneKwz4cbXODE8dE6WaWTQ",
        "y": "B8tFdp8QcOLCRw_lsb_mMTPAsM3GTqS_N5Go7CoH_U8",
    }
    d = hashlib.sha384(rfc8785.dumps({"additional-evidence": a, "nonce": NONCE, "tee-pubkey": k})).hexdigest()
    assert d == (
        "c21f2f5dd533f1f4b34683a4b271de25c9cdf7e42651b5c5f458e868b3a7ec439bbbdcbcd3f5c63648a2b66ac05fbdc2"
    )


class RecordingDevice(SampleDeviceAttester):
    tee = "nvidia"

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.accepted = 0

    async def get_evidence(self, report_data: bytes) -> Any:
        self.seen.append(report_data)
        return {"device_evidence_list": [{"nonce": report_data[:32].hex()}]}

    async def on_attestation_accepted(self) -> None:
        self.accepted += 1


async def test_device_gets_the_runtime_data_digest_and_accept_hook_runs() -> None:
    kbs = FakeKbs()
    dev = RecordingDevice()
    agent = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(URL)), SampleAttester(), devices=[dev], http_factory=_factory(kbs)
    )
    await agent.get_token("kbs")
    (body,) = kbs.attests
    key = body["runtime-data"]["tee-pubkey"]
    want = hashlib.sha384(rfc8785.dumps({"nonce": NONCE, "tee-pubkey": key})).digest()
    assert dev.seen == [want]
    additional = json.loads(body["tee-evidence"]["additional_evidence"])
    assert additional == {"nvidia": {"device_evidence_list": [{"nonce": want[:32].hex()}]}}
    assert dev.accepted == 1
