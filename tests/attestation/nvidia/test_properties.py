"""Property tests: hostile bytes only ever produce the documented errors."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError
from attestation.nvidia.errors import RimError
from attestation.nvidia.evidence import DeviceEvidence, parse_evidence
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.nvidia.rim import Rim, RimEntry, compare_measurements
from attestation.nvidia.spdm import AttestationReport
from attestation.nvidia.verify import TrustAnchors, verify_device

from .vectors import NONCE_931, NOW, read, report_bytes

#: length of nvtrust/hopperAttestationReport.txt (checked in hopper())
HOPPER_LEN = 4117


@functools.cache
def hopper() -> bytes:
    raw = report_bytes("nvtrust/hopperAttestationReport.txt")
    assert len(raw) == HOPPER_LEN
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_reports_raise_only_format_errors(data: st.DataObject) -> None:
    raw = bytearray(hopper())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(EvidenceFormatError):
        AttestationReport.from_bytes(bytes(raw[:cut]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, HOPPER_LEN - 97 - 1), st.integers(1, 255))
def test_any_signed_byte_change_fails_verification(offset: int, xor: int) -> None:
    raw = bytearray(hopper())
    raw[offset] ^= xor
    d = DeviceEvidence("HOPPER", None, bytes(raw), read("nvtrust/hopperCertChain.txt"))
    with pytest.raises(AttestationError):
        verify_device(d, expected_nonce=NONCE_931, anchors=TrustAnchors.nvidia(), now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=20), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_json_is_rejected_cleanly(value: object) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_evidence(value)


def test_sdk_nonce_field_must_agree_with_report(anchors: TrustAnchors) -> None:
    item = {
        "arch": "HOPPER",
        "certificate": base64.b64encode(read("nvtrust/hopperCertChain.txt")).decode(),
        "evidence": base64.b64encode(hopper()).decode(),
        "nonce": "00" * 32,
    }
    (d,) = parse_evidence([item])
    with pytest.raises(VerificationError, match="disagrees"):
        verify_device(d, expected_nonce=None, anchors=anchors, now=NOW)
    item["nonce"] = NONCE_931.hex()
    (d,) = parse_evidence(json.dumps([item]))
    assert verify_device(d, expected_nonce=None, anchors=anchors, now=NOW).report.nonce == NONCE_931


def _rim(entries: list[RimEntry]) -> Rim:
    return Rim("t", "GH100", "GPU", "1.0", tuple(entries), chain=())


def test_nvdec_disabled_skips_index_35_and_alternatives_match() -> None:
    a, b = b"\x01" * 48, b"\x02" * 48
    rim = _rim(
        [
            RimEntry(35, "nvdec", True, 48, (a,)),
            RimEntry(3, "m", True, 48, (a, b)),
            RimEntry(4, "off", False, 48, (a,)),
        ]
    )
    meas = {36: b, 4: b, 5: b}
    assert compare_measurements([rim], meas, nvdec0_disabled=True) == 1
    with pytest.raises(RimError, match="index 35"):
        compare_measurements([rim], meas, nvdec0_disabled=False)
    with pytest.raises(RimError, match="index 3"):
        compare_measurements([rim], {36: a, 4: b"\x02" * 32}, nvdec0_disabled=False)  # wrong size
    with pytest.raises(RimError, match="index 3"):
        compare_measurements([rim], {36: a}, nvdec0_disabled=False)  # missing block


def test_verifier_from_config_paths(tmp_path: Path) -> None:
    rim = tmp_path / "vbios.xml"
    rim.write_bytes(read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag"))
    root = tmp_path / "root.pem"
    root.write_bytes(read("nvtrust/verifier_device_root.pem"))
    v = NvidiaVerifier(device_root_path=str(root), rim_files=[str(rim)])
    ev = {
        "device_evidence_list": [
            {
                "arch": "HOPPER",
                "uuid": "GPU-cfg",
                "evidence": base64.b64encode(
                    report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt")
                ).decode(),
                "certificate": base64.b64encode(read("attestation-sdk/gpu_hopperCertChain.txt")).decode(),
            }
        ]
    }
    nonce = bytes.fromhex("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66")
    out = v.verify(
        ev, expected_report_data=nonce, expected_init_data_hash=None, now=datetime(2024, 6, 1, tzinfo=UTC)
    )
    assert out["devices"][0]["measurements_match"] is True
    two = tmp_path / "two.pem"
    two.write_bytes(read("nvtrust/verifier_device_root.pem") * 2)
    with pytest.raises(EvidenceFormatError, match="exactly one"):
        NvidiaVerifier(device_root_path=str(two))
