"""SPDM report parsing on the recorded NVIDIA vectors."""

from __future__ import annotations

import base64
import json

import pytest

from attestation.errors import EvidenceFormatError
from attestation.nvidia.spdm import REQUEST_SIZE, SIGNATURE_SIZE, AttestationReport, OpaqueData, OpaqueType

from .vectors import POSITIVE, read, report_bytes


@pytest.mark.parametrize(("rep", "chain", "nonce", "arch", "driver", "vbios"), POSITIVE)
def test_recorded_reports_parse(
    rep: str, chain: str, nonce: bytes, arch: str, driver: str, vbios: str
) -> None:
    raw = report_bytes(rep)
    r = AttestationReport.from_bytes(raw)
    assert r.nonce == nonce
    assert r.request.param2 == 0xFF and r.request.slot_id == 0
    assert len(r.response.blocks) == 64
    assert [b.index for b in r.response.blocks] == list(range(1, 65))
    assert all(len(b.value) == 48 for b in r.response.blocks)
    assert r.opaque.driver_version == driver
    assert r.opaque.vbios_version == vbios
    # signed bytes = everything up to the signature; the signature is the next 96 bytes
    n = len(r.signed_bytes)
    assert raw[n : n + SIGNATURE_SIZE] == r.response.signature
    assert n + SIGNATURE_SIZE + r.trailing_bytes == len(raw)


def test_trailing_byte_is_tolerated_and_not_signed() -> None:
    raw = report_bytes("trustee/hopper_coco_report1.txt")
    r = AttestationReport.from_bytes(raw)
    assert r.trailing_bytes == 1 and raw[-1] == 0
    assert len(r.signed_bytes) == len(raw) - 1 - SIGNATURE_SIZE


def test_claims_match_trustee_expected_values() -> None:
    """trustee's expected parse of the nvtrust sample (hopperAttestationReport-claims.txt)."""
    expected = json.loads(read("trustee/hopperAttestationReport-claims.txt"))
    r = AttestationReport.from_bytes(report_bytes("nvtrust/hopperAttestationReport.txt"))
    meas = {str(k): v.hex() for k, v in r.measurements().items()}
    assert meas == expected["measurements"]
    cfg = expected["config"]
    o = r.opaque
    assert o.fwid is not None and o.fwid.hex() == cfg["fwid"]
    assert o.text(OpaqueType.PROJECT) == cfg["project"]
    assert o.text(OpaqueType.PROJECT_SKU) == cfg["project_sku"]
    assert o.text(OpaqueType.CHIP_SKU) == cfg["chip_sku"]
    assert o.get(OpaqueType.BOARD_ID).hex() == cfg["board_id"]  # type: ignore[union-attr]
    counts = o.measurement_counts
    assert counts is not None
    assert {str(i + 1): c for i, c in enumerate(counts)} == cfg["measurement_count"]


def test_feature_flag_and_nvdec_status() -> None:
    o = AttestationReport.from_bytes(report_bytes("trustee/hopper_coco_report1.txt")).opaque
    assert o.feature_flag == "SPT"
    assert o.nvdec0_disabled is True
    assert o.as_claims()["nvdec0_status"] == "disabled"


def test_nvswitch_reports_parse() -> None:
    items = json.loads(read("nvtrust/ppcie_switch_evidence.json"))
    assert len(items) == 4
    for item in items:
        r = AttestationReport.from_bytes(base64.b64decode(item["evidence"]))
        assert r.nonce.hex() == item["nonce"]
        assert r.opaque.vbios_version == "96.10.73.00.01"  # ASCII on NVSwitch
        assert r.opaque.driver_version is None
        assert r.opaque.get(OpaqueType.SWITCH_PDI) is not None
        assert "type_26" in r.opaque.as_claims()  # unknown type kept, not rejected


def test_vbios_binary_encoding() -> None:
    o = OpaqueData.from_bytes(bytes([6, 0, 8, 0, 0x00, 0x9F, 0x00, 0x96, 0x01, 0, 0, 0]))
    assert o.vbios_version == "96.00.9f.00.01"


def test_every_truncation_is_a_format_error() -> None:
    raw = report_bytes("nvtrust/hopperAttestationReport.txt")
    for cut in [
        0,
        1,
        4,
        REQUEST_SIZE - 1,
        REQUEST_SIZE,
        REQUEST_SIZE + 5,
        500,
        3600,
        3700,
        len(raw) - 97,
        len(raw) - 1,
    ]:
        with pytest.raises(EvidenceFormatError):
            AttestationReport.from_bytes(raw[:cut])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x10, "SPDM 1.1 request"),
        (1, 0xE1, "GET_MEASUREMENTS"),
        (2, 0x00, "signature"),
        (REQUEST_SIZE, 0x12, "SPDM 1.1 response"),
        (REQUEST_SIZE + 1, 0x61, "MEASUREMENTS response"),
    ],
)
def test_bad_header_fields(offset: int, value: int, message: str) -> None:
    raw = bytearray(report_bytes("nvtrust/hopperAttestationReport.txt"))
    raw[offset] = value
    with pytest.raises(EvidenceFormatError, match=message):
        AttestationReport.from_bytes(bytes(raw))


def test_too_much_trailing_data_and_oversize_rejected() -> None:
    raw = report_bytes("nvtrust/hopperAttestationReport.txt")
    with pytest.raises(EvidenceFormatError, match="after the report signature"):
        AttestationReport.from_bytes(raw + b"\0" * 65)
    with pytest.raises(EvidenceFormatError, match="more than"):
        AttestationReport.from_bytes(raw + b"\0" * 0x2000)


def test_opaque_field_running_past_end() -> None:
    with pytest.raises(EvidenceFormatError, match="runs past"):
        OpaqueData.from_bytes(bytes([3, 0, 9, 0]) + b"550")
