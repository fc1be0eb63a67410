"""SnpVerifier (the KBS-side EvidenceVerifier) and the KDS client (mock transport only)."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.snp.errors import EndorsementKeyUnavailable, HostDataMismatch, ReportDataMismatch
from attestation.snp.evidence import CertTableEntry, SnpEvidence
from attestation.snp.kds import KdsClient, cache_name, vcek_url
from attestation.snp.report import AttestationReport, Product, TcbVersion
from attestation.snp.verifier import InsecureSkipReportDataBinding, SnpVerifier
from attestation.verifier import EvidenceVerifier

from .synth import build_report

#: recorded vectors are verified as of a fixed date inside every VCEK's validity (Milan 2023-2030,
#: Genoa 2025-2032), so the suite does not start failing the day a recorded certificate expires
TODAY = datetime(2026, 1, 1, tzinfo=UTC)


def _evidence(fx: Path, rep: str, cert: str | None, cert_type: str = "VCEK") -> dict:
    report = AttestationReport.from_bytes((fx / rep).read_bytes())
    chain = (CertTableEntry.of(cert_type, (fx / cert).read_bytes()),) if cert else None
    return SnpEvidence(report, chain).to_json()


def test_protocol_and_trustee_claims(fx: Path) -> None:
    v = SnpVerifier()
    assert isinstance(v, EvidenceVerifier) and v.tee == "snp"
    doc = (fx / "trustee/e2e_snp_evidence_genoa.json").read_bytes()
    report = SnpEvidence.from_json(doc).report
    claims = v.verify(doc, expected_report_data=report.report_data, expected_init_data_hash=None, now=TODAY)
    assert claims["tee_type"] == "snp"
    assert claims["measurement"] == report.measurement.hex()
    assert claims["report_data"] == report.report_data.hex()
    assert claims["init_data"] == report.host_data.hex()
    assert claims["policy_debug_allowed"] is False and claims["policy_smt_allowed"] is True
    assert claims["reported_tcb_bootloader"] == 10 and claims["reported_tcb_microcode"] == 25
    assert claims["product"] == "Genoa" and claims["signing_key"] == "vcek"
    assert "reported_tcb_fmc" not in claims
    # dict input works the same as bytes
    assert v.verify(
        json.loads(doc), expected_report_data=report.report_data, expected_init_data_hash=None, now=TODAY
    )


def test_binding_failures(fx: Path) -> None:
    v = SnpVerifier()
    ev = _evidence(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    nonce = bytes.fromhex("ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2")
    v.verify(ev, expected_report_data=nonce, expected_init_data_hash=bytes(32), now=TODAY)
    with pytest.raises(ReportDataMismatch):
        v.verify(ev, expected_report_data=b"\x01" * 48, expected_init_data_hash=None, now=TODAY)
    with pytest.raises(HostDataMismatch):
        v.verify(ev, expected_report_data=nonce, expected_init_data_hash=b"\x01" * 48, now=TODAY)


def test_vmpl_must_be_zero_by_default(fx: Path) -> None:
    ev = _evidence(fx, "trustee/test-vlek-report.bin", "trustee/test-vlek.der", "VLEK")
    rd = AttestationReport.from_bytes((fx / "trustee/test-vlek-report.bin").read_bytes()).report_data
    at = datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(VerificationError, match="VMPL 1"):
        SnpVerifier().verify(ev, expected_report_data=rd, expected_init_data_hash=None, now=at)
    claims = SnpVerifier(required_vmpl=None).verify(
        ev, expected_report_data=rd, expected_init_data_hash=None, now=at
    )
    assert claims["signing_key"] == "vlek" and claims["vmpl"] == 1


def test_min_report_version(fx: Path) -> None:
    ev = _evidence(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    with pytest.raises(VerificationError, match="below the minimum 3"):
        SnpVerifier(min_report_version=3).verify_evidence(ev, now=TODAY)


def test_missing_vcek_without_kds(fx: Path) -> None:
    ev = _evidence(fx, "trustee/test-report.bin", None)
    with pytest.raises(EndorsementKeyUnavailable, match="KDS lookup is disabled"):
        SnpVerifier().verify_evidence(ev, now=TODAY)


def test_mislabelled_cert_chain_entry(fx: Path) -> None:
    ev = _evidence(fx, "trustee/test-report.bin", "trustee/test-vcek.der", "VLEK")
    with pytest.raises(VerificationError, match="typed VLEK holds a VCEK"):
        SnpVerifier().verify_evidence(ev, now=TODAY)


def test_malformed_evidence_is_a_format_error() -> None:
    with pytest.raises(EvidenceFormatError):
        SnpVerifier().verify(
            b'{"attestation_report": {}}', expected_report_data=b"", expected_init_data_hash=None, now=TODAY
        )


def test_insecure_hook_is_explicit_and_marked(fx: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError):
        InsecureSkipReportDataBinding("  ")
    ev = _evidence(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    with caplog.at_level(logging.WARNING):
        v = SnpVerifier(
            insecure_skip_report_data_binding=InsecureSkipReportDataBinding("recorded report in a test")
        )
        claims = v.verify(ev, expected_report_data=b"\x77" * 48, expected_init_data_hash=None, now=TODAY)
    assert claims["insecure_report_data_binding_skipped"] is True
    assert "INSECURE" in caplog.text
    with pytest.raises(HostDataMismatch):  # init-data binding is still enforced
        v.verify(ev, expected_report_data=b"", expected_init_data_hash=b"\x01" * 32, now=TODAY)


# ---- KDS -------------------------------------------------------------------------------


def test_vcek_url_formats(fx: Path) -> None:
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    url = vcek_url(r, Product.MILAN)
    assert url == (
        f"https://kdsintf.amd.com/vcek/v1/Milan/{r.chip_id.hex()}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
    )
    tcb = TcbVersion.build(fmc=1, bootloader=2, tee=0, snp=5, microcode=70)
    turin = AttestationReport.from_bytes(build_report(version=5, product=Product.TURIN, tcb=tcb))
    assert vcek_url(turin, Product.TURIN) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=70&fmcSPL=01"
    )


def _kds_transport(
    fx: Path, seen: list[str], *, status: int = 200, body: bytes | None = None
) -> httpx.MockTransport:
    vcek = (fx / "trustee/test-vcek.der").read_bytes()

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        return httpx.Response(status, content=body if body is not None else vcek)

    return httpx.MockTransport(handler)


def test_kds_fetch_then_cache(fx: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    http = httpx.Client(transport=_kds_transport(fx, seen))
    kds = KdsClient(cache_dir=tmp_path, http=http, offline=False)
    v = SnpVerifier(kds=kds)
    ev = _evidence(fx, "trustee/test-report.bin", None)
    report = SnpEvidence.from_json(ev).report
    # v2 report: product unknown, KDS is asked for Milan first and answers
    assert v.verify_evidence(ev, now=TODAY).product is Product.MILAN
    assert seen == [vcek_url(report, Product.MILAN)]
    assert (tmp_path / cache_name(report, Product.MILAN)).read_bytes() == (
        fx / "trustee/test-vcek.der"
    ).read_bytes()
    # second time: from the cache, offline, no request
    offline = SnpVerifier(kds=KdsClient(cache_dir=tmp_path))
    assert offline.verify_evidence(ev, now=TODAY).product is Product.MILAN
    assert len(seen) == 1


def test_kds_offline_and_errors(fx: Path, tmp_path: Path) -> None:
    ev = _evidence(fx, "trustee/test-report.bin", None)
    with pytest.raises(EndorsementKeyUnavailable, match="none cached"):
        SnpVerifier(kds=KdsClient(cache_dir=tmp_path)).verify_evidence(ev, now=TODAY)
    seen: list[str] = []
    notfound = KdsClient(http=httpx.Client(transport=_kds_transport(fx, seen, status=404)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="no VCEK"):
        SnpVerifier(kds=notfound).verify_evidence(ev, now=TODAY)
    assert len(seen) == 3  # one URL per product for a v2 report
    huge = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], body=b"\0" * 100_000)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="too large"):
        SnpVerifier(kds=huge).verify_evidence(ev, now=TODAY)
    junk = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], body=b"junk")), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="not a VCEK"):
        SnpVerifier(kds=junk).verify_evidence(ev, now=TODAY)
    err = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], status=500)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="HTTP 500"):
        SnpVerifier(kds=err).verify_evidence(ev, now=TODAY)


def test_certs_dir_scan_finds_vlek_and_vcek(fx: Path, tmp_path: Path) -> None:
    (tmp_path / "some-vcek.der").write_bytes((fx / "trustee/test-vcek.der").read_bytes())
    (tmp_path / "other.der").write_bytes((fx / "virtee-sev/vcek_milan.der").read_bytes())
    (tmp_path / "vlek.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes((fx / "trustee/test-vlek.der").read_bytes())
        + b"-----END CERTIFICATE-----\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    kds = KdsClient(cache_dir=tmp_path)
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    found = kds.cached(r)
    assert found is not None and found.hwid == r.chip_id
    vr = AttestationReport.from_bytes((fx / "trustee/test-vlek-report.bin").read_bytes())
    vlek = kds.get_vcek(vr)
    assert vlek.csp_id == "CN=cc-us-east-2.amazonaws.com"
