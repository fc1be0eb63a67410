"""Composite attestation: a CPU TEE (sample) plus NVIDIA GPUs as additional evidence.

The binding is recomputed here independently (rfc8785 + hashlib), following
kbs-protocol.md §3: device nonce = H(JCS({nonce, tee-pubkey}))[:32], primary
report data = H(JCS({additional-evidence, nonce, tee-pubkey})).

The KBS side is a minimal in-test KBS on an httpx MockTransport (the
reference KBS package had no server yet when this was written); it checks
the binding and verifies the GPU evidence with NvidiaVerifier. GPUs are the
fake NVML layer: TestGpu re-signs a recorded Hopper report for each fresh
nonce under a test root (a real nonce cannot be signed by NVIDIA's key here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import rfc8785

from attestation.aa.agent import AttestationAgent, CompositeEvidenceSource
from attestation.aa.config import AaConfig, KbsTokenConfig
from attestation.errors import VerificationError
from attestation.nvidia.attester import NvidiaAttester
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.nvidia.verify import TrustAnchors
from attestation.sample.attester import SampleAttester
from kbs_client import rcar
from kbs_client.errors import AttestationRejected

from .fakegpu import FakeDevice, FakeNvml, TestGpu
from .vectors import read, report_bytes

# kbs-protocol.md §3 worked example
KAT_NONCE = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
KAT_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "alg": "ECDH-ES+A256KW",
    "x": "n62Erq4Iu-9_AQAU2CzvagneKwz4cbXODE8dE6WaWTQ",
    "y": "B8tFdp8QcOLCRw_lsb_mMTPAsM3GTqS_N5Go7CoH_U8",
}
KAT_DEVICE_DIGEST = (
    "acacfbd8696cf22b4d381dfe17eca09d69541fadd8de68a0da0d0f917e9291b67c0aa8dcb22f48f6da5178b125992efb"
)


def device_digest(nonce: str, jwk: dict[str, Any]) -> bytes:
    return hashlib.sha384(rfc8785.dumps({"nonce": nonce, "tee-pubkey": jwk})).digest()


def primary_digest(nonce: str, jwk: dict[str, Any], additional: str) -> bytes:
    return hashlib.sha384(
        rfc8785.dumps({"additional-evidence": additional, "nonce": nonce, "tee-pubkey": jwk})
    ).digest()


def test_known_answer_device_digest() -> None:
    assert device_digest(KAT_NONCE, KAT_JWK).hex() == KAT_DEVICE_DIGEST
    assert rcar.device_report_data("sha384", KAT_NONCE, KAT_JWK).hex() == KAT_DEVICE_DIGEST


async def test_gpu_signs_first_32_bytes_of_device_digest() -> None:
    gpu = TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt"))
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-kat", gpu.report, gpu.chain_pem)])
    source = CompositeEvidenceSource(SampleAttester(), [NvidiaAttester(fake)])
    additional = await source.additional_evidence(bytes.fromhex(KAT_DEVICE_DIGEST))
    assert ("report", bytes.fromhex(KAT_DEVICE_DIGEST)[:32]) in fake.calls
    parsed = json.loads(additional)
    assert list(parsed) == ["nvidia"]
    assert parsed["nvidia"]["device_evidence_list"][0]["uuid"] == "GPU-kat"
    # the string is what gets hashed into the CPU report data
    rd = primary_digest(KAT_NONCE, KAT_JWK, additional)
    assert rcar.primary_report_data("sha384", KAT_NONCE, KAT_JWK, additional) == rd


class MiniKbs:
    """Just enough of KBS 0.4.0 /auth + /attest to check composite evidence."""

    def __init__(self, verifier: NvidiaVerifier) -> None:
        self.verifier = verifier
        self.sessions: dict[str, str] = {}
        self.claims: dict[str, Any] | None = None
        self.failure: str | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/kbs/v0/auth":
            body = json.loads(request.content)
            assert body["version"] == "0.4.0" and body["tee"] == "sample"
            sid, nonce = secrets.token_hex(8), base64.b64encode(secrets.token_bytes(32)).decode()
            self.sessions[sid] = nonce
            return httpx.Response(
                200,
                json={"nonce": nonce, "extra-params": ""},
                headers={"set-cookie": f"kbs-session-id={sid}"},
            )
        if request.url.path == "/kbs/v0/attest":
            sid = request.headers["cookie"].split("kbs-session-id=")[1].split(";")[0]
            try:
                return self._attest(self.sessions[sid], json.loads(request.content))
            except VerificationError as exc:
                self.failure = str(exc)
                return httpx.Response(
                    401,
                    json={
                        "type": "https://github.com/confidential-containers/kbs/errors/AttestationError",
                        "detail": "Attestation error: RCAR handshake Attest failed",
                    },
                )
        return httpx.Response(404)

    def _attest(self, nonce: str, body: dict[str, Any]) -> httpx.Response:
        rt = body["runtime-data"]
        assert rt["nonce"] == nonce
        jwk = rt["tee-pubkey"]
        additional = body["tee-evidence"]["additional_evidence"]
        assert isinstance(additional, str)
        primary = body["tee-evidence"]["primary_evidence"]
        if base64.b64decode(primary["report_data"]) != primary_digest(nonce, jwk, additional):
            raise VerificationError("primary report data does not bind the additional evidence")
        devices = json.loads(additional)
        self.claims = self.verifier.verify(
            devices["nvidia"],
            expected_report_data=device_digest(nonce, jwk),
            expected_init_data_hash=None,
            now=datetime.now(UTC),
        )
        submods = {
            f"gpu{i}": {"ear.veraison.annotated-evidence": {"nvidia": d}}
            for i, d in enumerate(self.claims["devices"])
        }
        payload = {"exp": int(time.time()) + 300, "submods": submods}
        seg = [
            base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode()
            for p in ({"alg": "none"}, payload)
        ]
        return httpx.Response(200, json={"token": ".".join(seg) + ".c2ln"})


async def test_composite_handshake_with_gpu_evidence() -> None:
    gpu = TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt"))
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-0", gpu.report, gpu.chain_pem)])
    kbs = MiniKbs(NvidiaVerifier(anchors=TrustAnchors(device_root=gpu.root, rim_root=gpu.root)))
    source = CompositeEvidenceSource(SampleAttester(), [NvidiaAttester(fake)])
    async with httpx.AsyncClient(transport=httpx.MockTransport(kbs.handler)) as http:
        result = await rcar.attest(http, "http://kbs.test", source, attempts=1)
    assert kbs.claims is not None
    (dev,) = kbs.claims["devices"]
    assert dev["uuid"] == "GPU-0" and dev["arch"] == "HOPPER" and dev["nonce_checked"] is True
    assert (
        result.claims["submods"]["gpu0"]["ear.veraison.annotated-evidence"]["nvidia"]["driver_version"]
        == "550.90.07"
    )
    assert fake.ready is False  # the hook is the AA's job, after the token arrives


async def test_composite_handshake_rejects_untrusted_gpu() -> None:
    trusted, rogue = (TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt")) for _ in range(2))
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-rogue", rogue.report, rogue.chain_pem)])
    kbs = MiniKbs(NvidiaVerifier(anchors=TrustAnchors(device_root=trusted.root, rim_root=trusted.root)))
    source = CompositeEvidenceSource(SampleAttester(), [NvidiaAttester(fake)])
    async with httpx.AsyncClient(transport=httpx.MockTransport(kbs.handler)) as http:
        with pytest.raises(AttestationRejected):
            await rcar.attest(http, "http://kbs.test", source, attempts=1)
    assert kbs.failure is not None and "chain" in kbs.failure


async def test_recorded_nvidia_evidence_replayed_to_kbs_is_rejected() -> None:
    """Real NVIDIA-signed evidence with a stale nonce: the KBS must refuse it
    even if an attester forwarded it (this one bypasses the attester's own check)."""

    class Replayer:
        tee = "nvidia"

        async def get_evidence(self, report_data: bytes) -> Any:
            return {
                "device_evidence_list": [
                    {
                        "arch": "HOPPER",
                        "uuid": "GPU-replay",
                        "evidence": base64.b64encode(
                            report_bytes("nvtrust/hopperAttestationReport.txt")
                        ).decode(),
                        "certificate": base64.b64encode(read("nvtrust/hopperCertChain.txt")).decode(),
                    }
                ]
            }

        async def on_attestation_accepted(self) -> None:
            raise AssertionError("must not be called")

    kbs = MiniKbs(NvidiaVerifier())
    source = CompositeEvidenceSource(SampleAttester(), [Replayer()])
    async with httpx.AsyncClient(transport=httpx.MockTransport(kbs.handler)) as http:
        with pytest.raises(AttestationRejected):
            await rcar.attest(http, "http://kbs.test", source, attempts=1)
    assert kbs.failure == "report nonce does not match the expected nonce"


async def test_aa_get_token_sets_gpu_ready_after_acceptance() -> None:
    gpu = TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt"))
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-aa", gpu.report, gpu.chain_pem)])
    kbs = MiniKbs(NvidiaVerifier(anchors=TrustAnchors(device_root=gpu.root, rim_root=gpu.root)))

    def http_factory(base_url: str, cert_pem: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(kbs.handler))

    aa = AttestationAgent(
        AaConfig(kbs=KbsTokenConfig(url="http://kbs.test")),
        SampleAttester(),
        devices=[NvidiaAttester(fake)],
        http_factory=http_factory,
        kbs_retry_delay=0.0,
    )
    assert await aa.additional_tees() == ["nvidia"]
    out = json.loads(await aa.get_token("kbs"))
    assert out["token"].count(".") == 2
    assert fake.ready is True
    assert [c[0] for c in fake.calls].index("set_ready") > [c[0] for c in fake.calls].index("report")
    # GetAdditionalEvidence exposes the same map
    extra = json.loads(await aa.get_additional_evidence(b"\x11" * 48))
    assert extra["nvidia"]["device_evidence_list"][0]["uuid"] == "GPU-aa"
    assert ("report", b"\x11" * 32) in fake.calls
