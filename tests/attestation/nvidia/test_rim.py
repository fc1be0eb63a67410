"""RIM XML-DSig verification, signer chains, and measurement comparison."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from attestation.errors import EvidenceFormatError
from attestation.nvidia.certs import default_rim_root
from attestation.nvidia.errors import RimError
from attestation.nvidia.rim import compare_measurements, verify_rim
from attestation.nvidia.spdm import AttestationReport

from .vectors import read, report_bytes

GOOD_RIMS = [
    "nvtrust/1010_0200_882_96005E0001_PROD.swidtag",
    "nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag",
    "nvtrust/1010_0200_882_960074001A_PROD.swidtag",
    "nvtrust/1010_0205_862_96005E0004_PROD.swidtag",
    "nvtrust/1010_0205_862_9600740020_PROD.swidtag",
    "nvtrust/Driver_RIM_test_no_gpu.swidtag",
    "attestation-sdk/rims/NV_GPU_DRIVER_GH100_550.144.03.xml",
    "attestation-sdk/rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml",
    "attestation-sdk/rims/switchVBIOSRim_NV_SWITCH_BIOS_5612_0002_890_9610550001.xml",
]


def signer_time(doc: bytes) -> datetime:
    """One day after the signer certificate's notBefore (most RIM signers have expired since)."""
    m = re.search(rb"<ds:X509Certificate>([^<]+)<", doc)
    assert m is not None
    cert = x509.load_der_x509_certificate(base64.b64decode(m.group(1)))
    return cert.not_valid_before_utc + timedelta(days=1)


@pytest.mark.parametrize("rel", GOOD_RIMS)
def test_genuine_rims_verify_as_of_signing(rel: str) -> None:
    doc = read(rel)
    rim = verify_rim(doc, root=default_rim_root(), now=signer_time(doc))
    assert rim.product in {"GH100", "LS10"}
    assert rim.colloquial_version
    assert rim.active_entries()
    assert rim.signer.subject.rfc4514_string()


def test_vbios_rim_fields() -> None:
    doc = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    rim = verify_rim(doc, root=default_rim_root(), now=signer_time(doc))
    assert rim.colloquial_version == "96.00.5E.00.01" and rim.edition == "GPU"
    assert len(rim.active_entries()) == 12
    assert all(e.size == 48 for e in rim.entries)
    assert {e.index: len(e.alternatives) for e in rim.entries if len(e.alternatives) > 1} == {12: 4}


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("attestation-sdk/rims/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml", "signed digest"),
        ("attestation-sdk/rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml", "signed digest"),
        (
            "attestation-sdk/rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml",
            "signed digest",
        ),
        (
            "attestation-sdk/rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml",
            "signed digest",
        ),
        ("attestation-sdk/rims/incorrect_signature_driver_rim.xml", "signature does not verify"),
        ("attestation-sdk/rims/incorrect_cert_chain_driver_rim.xml", "chain"),
    ],
)
def test_bad_rims_rejected(rel: str, message: str) -> None:
    doc = read(rel)
    with pytest.raises(RimError, match=message):
        verify_rim(doc, root=default_rim_root(), now=signer_time(doc))


def test_expired_rim_signer_rejected_today() -> None:
    doc = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    with pytest.raises(RimError, match="expired 2025-06-22"):
        verify_rim(doc, root=default_rim_root(), now=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(RimError, match="not valid before"):
        verify_rim(doc, root=default_rim_root(), now=datetime(2023, 1, 1, tzinfo=UTC))


def test_wrong_rim_root_rejected() -> None:
    wrong = x509.load_pem_x509_certificate(read("attestation-sdk/rims/incorrect_rim_root.crt"))
    doc = read("attestation-sdk/rims/NV_GPU_DRIVER_GH100_550.144.03.xml")
    with pytest.raises(RimError, match="chain"):
        verify_rim(doc, root=wrong, now=signer_time(doc))


def test_packaged_rim_root_is_the_sdk_root() -> None:
    sdk = x509.load_pem_x509_certificate(read("attestation-sdk/rims/rim_root.crt"))
    assert sdk == default_rim_root()


def test_single_edited_measurement_breaks_digest() -> None:
    doc = read("attestation-sdk/rims/NV_GPU_DRIVER_GH100_550.144.03.xml")
    i = doc.index(b'Hash0="') + len(b'Hash0="')
    edited = doc[:i] + (b"1" if doc[i : i + 1] != b"1" else b"2") + doc[i + 1 :]
    with pytest.raises(RimError, match="signed digest"):
        verify_rim(edited, root=default_rim_root(), now=signer_time(doc))


def test_dtd_and_garbage_rejected() -> None:
    with pytest.raises(EvidenceFormatError, match="DTD"):
        verify_rim(
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
            root=default_rim_root(),
            now=datetime.now(UTC),
        )
    with pytest.raises(EvidenceFormatError):
        verify_rim(b"<SoftwareIdentity", root=default_rim_root(), now=datetime.now(UTC))
    with pytest.raises(EvidenceFormatError, match="SWID"):
        verify_rim(b"<x/>", root=default_rim_root(), now=datetime.now(UTC))


def test_second_signature_rejected() -> None:
    doc = read("attestation-sdk/rims/NV_GPU_DRIVER_GH100_550.144.03.xml")
    start = doc.index(b"<ds:Signature")
    end = doc.index(b"</ds:Signature>") + len(b"</ds:Signature>")
    twice = doc[:end] + doc[start:end] + doc[end:]
    with pytest.raises(RimError, match="exactly one signature"):
        verify_rim(twice, root=default_rim_root(), now=signer_time(doc))


def test_vbios_rim_matches_driver_535_report_exactly() -> None:
    doc = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    rim = verify_rim(doc, root=default_rim_root(), now=signer_time(doc))
    report = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"))
    assert compare_measurements([rim], report.measurements(), nvdec0_disabled=False) == 12


def test_genuine_rim_with_different_value_reports_index_9() -> None:
    doc = read("attestation-sdk/rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml")
    rim = verify_rim(doc, root=default_rim_root(), now=signer_time(doc))
    report = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"))
    with pytest.raises(RimError, match=r"index 9$"):
        compare_measurements([rim], report.measurements(), nvdec0_disabled=False)


def test_index_active_in_two_rims_is_an_error() -> None:
    doc = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    rim = verify_rim(doc, root=default_rim_root(), now=signer_time(doc))
    report = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"))
    with pytest.raises(RimError, match="more than one RIM"):
        compare_measurements([rim, rim], report.measurements(), nvdec0_disabled=False)
