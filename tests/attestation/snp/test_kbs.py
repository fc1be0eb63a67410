"""SnpVerifier, the KBS-side EvidenceVerifier (:mod:`attestation.snp.kbs`)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.snp.errors import EndorsementKeyUnavailable, HostDataMismatch, ReportDataMismatch
from attestation.snp.evidence import CertTableEntry, SnpEvidence
from attestation.snp.kbs import SnpVerifier
from attestation.snp.report import AttestationReport
from attestation.verifier import EvidenceVerifier

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
        SnpVerifier(insecure_skip_report_data_binding="  ")
    ev = _evidence(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    with caplog.at_level(logging.WARNING):
        v = SnpVerifier(insecure_skip_report_data_binding="recorded report in a test")
        claims = v.verify(ev, expected_report_data=b"\x77" * 48, expected_init_data_hash=None, now=TODAY)
    assert claims["insecure_report_data_binding_skipped"] is True
    assert (
        "INSECURE snp verifier mode: REPORT_DATA binding disabled (recorded report in a test)" in caplog.text
    )
    assert "INSECURE: snp REPORT_DATA binding not checked" in caplog.text
    assert "insecure_report_data_binding_skipped" not in SnpVerifier().verify(
        ev, expected_report_data=bytes.fromhex(claims["report_data"]), expected_init_data_hash=None, now=TODAY
    )
    with pytest.raises(HostDataMismatch):  # init-data binding is still enforced
        v.verify(ev, expected_report_data=b"", expected_init_data_hash=b"\x01" * 32, now=TODAY)
