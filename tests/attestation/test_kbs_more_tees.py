"""RCAR handshakes with the reference ``kbs`` (a real subprocess on
127.0.0.1) for the TEEs added after snp/tdx/nvidia, each driven by a TEE's
recorded evidence (tests/fixtures/evidence/<tee>, MANIFEST.md there).

Honest caveat, as for SNP: recorded evidence carries the nonce of the session
it was recorded in, never this one's, so the KBS runs with each verifier's
test-only ``insecure_skip_report_data_binding`` option. Everything else
(signatures, chains, PCR digests, runtime-data binding) is checked; without
the option the same handshake is refused (checked below).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from kbs_client.errors import AttestationRejected
from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_protocol.jws import decode_unverified

support = pytest.importorskip(
    "tests.support.kbs", reason="tests/support/kbs.py (reference KBS fixture) missing"
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evidence"

#: tee -> recorded evidence file
RECORDED = {
    "az-snp-vtpm": FIXTURES / "az-snp-vtpm" / "evidence-v2.json",
    "az-tdx-vtpm": FIXTURES / "az-tdx-vtpm" / "evidence-v1.json",
    "tpm": FIXTURES / "tpm" / "tpm_evidence.json",
    "sgx": FIXTURES / "sgx" / "occlum_quote.dat",
}

SKIP_BINDING = "".join(
    f'[attestation_service.verifier_config."{tee}"]\n'
    f'insecure_skip_report_data_binding = "test: recorded {tee} evidence cannot bind this session\'s nonce"\n'
    for tee in RECORDED
)


class Recorded:
    """kbs_client EvidenceSource that sends a recorded evidence document."""

    def __init__(self, tee: str) -> None:
        self.tee = tee
        raw = RECORDED[tee].read_bytes()
        self.doc = json.loads(raw) if tee != "sgx" else {"quote": base64.b64encode(raw).decode()}

    async def primary_evidence(self, report_data: bytes) -> Any:
        return self.doc

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""


def _tee_claims(token: str, tee: str) -> dict[str, Any]:
    _, claims = decode_unverified(token)
    out: dict[str, Any] = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][tee]
    return out


@pytest.mark.slow
async def test_rcar_with_each_recorded_tee(tmp_path: Path) -> None:
    with support.start_kbs(
        tmp_path / "kbs",
        policy="allow_all",
        resources={"default/key/tees": b"released"},
        extra_toml=SKIP_BINDING,
    ) as kbs:
        async with httpx.AsyncClient() as http:
            got: dict[str, dict[str, Any]] = {}
            for tee in RECORDED:
                att = await attest(http, kbs.url, Recorded(tee), attempts=1, timeout=30)
                secret = await get_resource(
                    http, kbs.url, "kbs:///default/key/tees", token=att.token, key=att.key
                )
                assert secret == b"released", tee
                got[tee] = _tee_claims(att.token, tee)
        log = kbs.log_text()
    # upstream's claim names reach the token
    snp = got["az-snp-vtpm"]
    assert snp["tpm"]["pcr00"] == "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
    assert snp["policy_debug_allowed"] == "false" and "measurement" in snp and "reported_tcb_snp" in snp
    tdx = got["az-tdx-vtpm"]
    assert tdx["tpm"]["pcr00"] == "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
    assert tdx["quote"]["header"]["tee_type"] == "81000000" and "mr_td" in tdx["quote"]["body"]
    tpm = got["tpm"]
    assert tpm["pcr17"] == "ff" * 32 and tpm["ak_public"].startswith("MIIBIjAN")
    sgx = got["sgx"]
    assert sgx["body"]["mr_enclave"].startswith("8f173e4613ff05c5") and sgx["header"]["version"] == "0300"
    for claims in got.values():
        assert claims["insecure_report_data_binding_skipped"] is True
    assert log.count("INSECURE") >= len(RECORDED)


@pytest.mark.slow
async def test_recorded_tees_are_refused_without_the_test_hook(tmp_path: Path) -> None:
    with support.start_kbs(tmp_path / "kbs", policy="allow_all") as kbs:
        async with httpx.AsyncClient() as http:
            for tee in RECORDED:
                with pytest.raises(AttestationRejected):
                    await attest(http, kbs.url, Recorded(tee), attempts=1, timeout=30)


class MintedCca:
    """A CCA token minted per session with trustee's test RAK (see
    tests/attestation/cca/mint.py): the challenge is this session's report data."""

    tee = "cca"

    def __init__(self) -> None:
        self.report_data: list[bytes] = []

    async def primary_evidence(self, report_data: bytes) -> Any:
        from .cca.mint import mint

        self.report_data.append(report_data)
        return {"token": list(mint(report_data))}

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""


@pytest.mark.slow
async def test_rcar_with_cca_binds_the_session_challenge(tmp_path: Path) -> None:
    from .cca.mint import TA_STORE

    toml = f'[attestation_service.verifier_config.cca]\nta_store = "{TA_STORE}"\n'
    with support.start_kbs(
        tmp_path / "kbs",
        policy="allow_all",
        resources={"default/key/cca": b"cca"},
        extra_toml=toml,
        dev_verifiers=(),  # no unsigned dev verifier: the log must hold no INSECURE line
    ) as kbs:
        async with httpx.AsyncClient() as http:
            source = MintedCca()
            att = await attest(http, kbs.url, source, attempts=1, timeout=30)
            assert (
                await get_resource(http, kbs.url, "kbs:///default/key/cca", token=att.token, key=att.key)
                == b"cca"
            )
        log = kbs.log_text()
    claims = _tee_claims(att.token, "cca")
    # as trustee's broker: the verifier's report_data sits at the top of the annotated evidence
    top = decode_unverified(att.token)[1]["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert top["report_data"] == source.report_data[0].ljust(64, b"\x00").hex()
    assert "report_data" not in claims
    assert "cca-realm-initial-measurement" in claims["realm"]
    assert "insecure_report_data_binding_skipped" not in claims and "INSECURE" not in log


@pytest.mark.slow
async def test_rcar_with_se_answers_the_attestation_challenge(tmp_path: Path) -> None:
    """Audit K1: /auth for se returns the SE attestation request as the nonce,
    with selected-hash-algorithm sha512; the guest's response verifies."""
    from .se.fake_uv import SeTestPki

    pki = SeTestPki.create(tmp_path / "se")
    opts = pki.options()
    toml = "[attestation_service.verifier_config.se]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in opts.items()
    )
    from attestation.se.arcb import boot_hdr_tags
    from attestation.se.attester import SeAttester

    from .se.fake_uv import SoftwareUv

    uv = SoftwareUv(pki.host_key, boot_hdr_tags((pki.dir / "hdr.bin").read_bytes()))
    challenges: list[str] = []

    async def capture(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/auth") and response.status_code == 200:
            await response.aread()
            challenges.append(response.json()["nonce"])

    with support.start_kbs(
        tmp_path / "kbs", policy="allow_all", resources={"default/key/se": b"se"}, extra_toml=toml
    ) as kbs:
        async with httpx.AsyncClient(event_hooks={"response": [capture]}) as http:
            att = await attest(http, kbs.url, LiveAttester(SeAttester(uv)), attempts=1, timeout=30)
            assert (
                await get_resource(http, kbs.url, "kbs:///default/key/se", token=att.token, key=att.key)
                == b"se"
            )
            r = await http.post(
                f"{kbs.url}/kbs/v0/auth",
                json={
                    "version": "0.4.0",
                    "tee": "se",
                    "extra-params": {"supported-hash-algorithms": ["sha512"]},
                },
            )
    challenge = json.loads(challenges[0])
    assert {"request_blob", "encr_measurement_key", "image_hdr_tags"} <= set(challenge)
    assert r.json()["extra-params"] == {"selected-hash-algorithm": "sha512"}
    assert len(uv.calls) == 1 and len(uv.calls[0][2]) == 64  # the UV got the 64-byte runtime-data digest
    claims = _tee_claims(att.token, "se")
    assert claims["tag"] == "92309d4589b9a85b427f8753171d1520" and len(claims["cuid"]) == 32


@pytest.mark.slow
async def test_se_auth_fails_without_a_configured_se_verifier(tmp_path: Path) -> None:
    with support.start_kbs(tmp_path / "kbs", policy="allow_all") as kbs:
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{kbs.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "se", "extra-params": ""}
            )
    assert r.status_code == 401 and "Auth failed" in r.text


class LiveAttester:
    """kbs_client EvidenceSource over one of our attesters."""

    def __init__(self, attester: Any) -> None:
        self.attester = attester
        self.tee = attester.tee

    async def primary_evidence(self, report_data: bytes) -> Any:
        return await self.attester.get_evidence(report_data)

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""


@pytest.mark.slow
async def test_rcar_with_a_live_swtpm_binds_the_session(tmp_path: Path) -> None:
    """tpm end to end with nothing relaxed: TpmAttester quotes this session's
    report data on a real software TPM; the KBS trusts the AK by configuration
    and checks PCR 8 against the init-data digest."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from attestation.tpm.attester import TpmAttester
    from attestation.tpm.device import open_tpm

    from .tpm.swtpm import running_swtpm

    initdata = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = "x"\n'

    with running_swtpm() as tpm:
        tpm.persist_ak(0x81010002)
        att = TpmAttester(tpm.address, ak_handle=0x81010002, event_log=None)
        await att.bind_init_data(hashlib.sha256(initdata.encode()).digest())
        with open_tpm(tpm.address) as t:
            ak = t.read_public(0x81010002).public_key
        pem = ak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        toml = f"[attestation_service.verifier_config.tpm]\ntrusted_ak_keys = [{json.dumps(pem)}]\n"
        with support.start_kbs(
            tmp_path / "kbs",
            policy="allow_all",
            resources={"default/key/tpm": b"tpm"},
            extra_toml=toml,
            dev_verifiers=(),  # no unsigned dev verifier: the log must hold no INSECURE line
        ) as kbs:
            async with httpx.AsyncClient() as http:
                result = await attest(
                    http, kbs.url, LiveAttester(att), attempts=1, timeout=30, init_data_toml=initdata
                )
                got = await get_resource(
                    http, kbs.url, "kbs:///default/key/tpm", token=result.token, key=result.key
                )
            log = kbs.log_text()
    assert got == b"tpm"
    claims = _tee_claims(result.token, "tpm")
    assert claims["ak_trust"] == "configured" and "insecure_report_data_binding_skipped" not in claims
    assert (
        claims["pcr08"] == hashlib.sha256(bytes(32) + hashlib.sha256(initdata.encode()).digest()).hexdigest()
    )
    assert "INSECURE" not in log


class CsvGuest:
    """A CSV guest whose (generated) PEK signs a report for this session."""

    tee = "csv"

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    async def primary_evidence(self, report_data: bytes) -> Any:
        return self.chain.evidence(report_data)

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""


@pytest.mark.slow
async def test_rcar_with_csv_over_a_generated_chain(tmp_path: Path) -> None:
    """csv end to end (Hygon's signing keys cannot exist here: a generated
    HRK → HSK → CEK → PEK chain, the HRK configured as the test root)."""
    from .csv.chain import GeneratedChain

    chain = GeneratedChain.create(tmp_path / "csv")
    toml = (
        "[attestation_service.verifier_config.csv]\n"
        f"hsk_cek_dir = {json.dumps(str(chain.dir))}\nhrk_cert = {json.dumps(str(chain.dir / 'hrk.cert'))}\n"
    )
    with support.start_kbs(
        tmp_path / "kbs", policy="allow_all", resources={"default/key/csv": b"csv"}, extra_toml=toml
    ) as kbs:
        async with httpx.AsyncClient() as http:
            result = await attest(http, kbs.url, CsvGuest(chain), attempts=1, timeout=30)
            got = await get_resource(
                http, kbs.url, "kbs:///default/key/csv", token=result.token, key=result.key
            )
    assert got == b"csv"
    claims = _tee_claims(result.token, "csv")
    assert claims["version"] == "2" and claims["serial_number"] == "CHIP1"
