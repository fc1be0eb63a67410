"""Parsing SNP reports (v2, v3, v5; Milan, Genoa, Turin) and the serde JSON form."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from attestation.snp.errors import ReportSizeError, SnpFormatError, UnknownReportVersion
from attestation.snp.evidence import SnpEvidence, report_from_serde, report_to_serde
from attestation.snp.report import REPORT_SIZE, AttestationReport, Product, SigningKey, TcbVersion

from .synth import build_report


def test_trustee_v2_milan_report_fields(fx: Path) -> None:
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    assert r.version == 2
    assert r.product is None  # v2 has no CPUID; product comes from the chain
    assert r.cpuid_fam_id is None
    assert r.guest_svn == 4
    assert r.policy.raw == 0x3001F
    assert (r.policy.abi_major, r.policy.abi_minor) == (0, 0x1F)
    assert r.policy.smt_allowed and not r.policy.debug and not r.policy.migrate_ma
    assert r.family_id == b"\x01" + b"\0" * 15 or r.family_id[0] == 0x01
    assert r.image_id[0] == 0x02
    assert r.vmpl == 0
    assert r.key_info.signing_key is SigningKey.VCEK
    assert r.reported_tcb.raw.hex() == "0300000000000873"
    assert (r.reported_tcb.bootloader, r.reported_tcb.tee, r.reported_tcb.snp, r.reported_tcb.microcode) == (
        3,
        0,
        8,
        115,
    )
    assert r.reported_tcb.fmc is None
    assert r.current_tcb.microcode == 206
    assert str(r.current) == "1.52.4"
    assert r.report_data == bytes.fromhex(
        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
    ) + bytes(32)
    assert any(r.id_key_digest)
    assert r.launch_mit_vector is None
    assert len(r.signed_bytes) == 0x2A0


def test_trustee_v3_vlek_report_fields(fx: Path) -> None:
    r = AttestationReport.from_bytes((fx / "trustee/test-vlek-report.bin").read_bytes())
    assert r.version == 3
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.product is Product.MILAN
    assert r.key_info.raw == 4 and r.key_info.signing_key is SigningKey.VLEK
    assert r.vmpl == 1
    assert r.chip_id == bytes(64)
    assert r.platform_info.raw == 39
    assert (
        r.platform_info.smt_enabled and r.platform_info.tsme_enabled and r.platform_info.alias_check_complete
    )
    assert r.reported_tcb.components() == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 217}


def test_virtee_hex_report(fx: Path) -> None:
    raw = bytes.fromhex((fx / "virtee-sev/report_milan.hex").read_text().strip())
    r = AttestationReport.from_bytes(raw)
    assert r.version == 2 and r.report_data.hex().startswith("d447b55d")


def test_genoa_derived_report_and_serde_roundtrip(fx: Path) -> None:
    raw = (fx / "trustee/DERIVED_e2e_report_genoa.bin").read_bytes()
    r = AttestationReport.from_bytes(raw)
    assert r.product is Product.GENOA and str(r.current) == "1.55.40"
    assert r.reported_tcb.components() == {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 25}
    doc = json.loads((fx / "trustee/e2e_snp_evidence_genoa.json").read_bytes())
    # the serde JSON rebuilds to the very same bytes, and we serialize it back identically
    rebuilt = report_from_serde(doc["attestation_report"])
    assert rebuilt.raw == raw
    assert report_to_serde(rebuilt) == doc["attestation_report"]


def test_turin_v5_layout_with_fmc() -> None:
    tcb = TcbVersion.build(fmc=2, bootloader=3, tee=4, snp=5, microcode=6)
    raw = build_report(version=5, product=Product.TURIN, tcb=tcb, mit=(11, 13))
    r = AttestationReport.from_bytes(raw)
    assert r.product is Product.TURIN
    assert r.reported_tcb.raw == bytes([2, 3, 4, 5, 0, 0, 0, 6])
    assert r.reported_tcb.components() == {"bootloader": 3, "tee": 4, "snp": 5, "microcode": 6, "fmc": 2}
    assert (r.launch_mit_vector, r.current_mit_vector) == (11, 13)
    assert r.hwid() == bytes(range(8))
    back = report_from_serde(report_to_serde(r))
    assert back.raw == raw
    older = report_to_serde(
        AttestationReport.from_bytes(build_report(version=5, product=Product.TURIN, tcb=tcb, mit=(0, 0)))
    )
    del older["launch_mit_vector"], older["current_mit_vector"]  # a serializer without the v5 fields
    assert report_from_serde(older).launch_mit_vector == 0
    bad = report_to_serde(r)
    bad["current_mit_vector"] = -1
    with pytest.raises(SnpFormatError, match="current_mit_vector"):
        report_from_serde(bad)
    assert report_to_serde(r)["reported_tcb"]["fmc"] == 2


def test_turin_chip_id_tail_must_be_zero() -> None:
    raw = bytearray(build_report(version=3, product=Product.TURIN))
    raw[0x1A0 + 20] = 1
    with pytest.raises(SnpFormatError, match="Turin CHIP_ID"):
        AttestationReport.from_bytes(bytes(raw))


def test_v4_reads_like_v3() -> None:
    assert AttestationReport.from_bytes(build_report(version=4)).product is Product.MILAN


@pytest.mark.parametrize("version", [0, 1, 6, 7, 0xFFFFFFFF])
def test_unknown_versions_are_rejected_not_misread(version: int) -> None:
    raw = bytearray(build_report(version=3))
    struct.pack_into("<I", raw, 0, version)
    with pytest.raises(UnknownReportVersion, match=f"version {version} is not supported"):
        AttestationReport.from_bytes(bytes(raw))


def test_unknown_cpu_generation_is_rejected() -> None:
    raw = bytearray(build_report(version=3))
    raw[0x188:0x18A] = bytes([0x1B, 0x00])
    with pytest.raises(UnknownReportVersion, match="not a known SEV-SNP generation"):
        AttestationReport.from_bytes(bytes(raw))


@pytest.mark.parametrize("size", [0, 1, 0x2A0, REPORT_SIZE - 1])
def test_truncated(size: int) -> None:
    with pytest.raises(ReportSizeError, match="truncated"):
        AttestationReport.from_bytes(build_report()[:size])


@pytest.mark.parametrize("extra", [1, 32, 4000])
def test_oversized(extra: int) -> None:
    with pytest.raises(ReportSizeError, match="oversized"):
        AttestationReport.from_bytes(build_report() + b"\0" * extra)


@pytest.mark.parametrize(
    "offset",
    [0x04C, 0x18B, 0x19F, 0x1EB, 0x1EF, 0x1F8, 0x29F, 0x2A0 + 48, 0x2E8 + 48, 0x330, REPORT_SIZE - 1],
)
def test_reserved_bytes_must_be_zero(offset: int) -> None:
    raw = bytearray(build_report(version=3))
    raw[offset] = 0x80
    with pytest.raises(SnpFormatError, match="reserved"):
        AttestationReport.from_bytes(bytes(raw))


def test_v2_cpuid_area_is_reserved() -> None:
    raw = bytearray(build_report(version=2, product=None))
    raw[0x188] = 0x19
    with pytest.raises(SnpFormatError, match="reserved"):
        AttestationReport.from_bytes(bytes(raw))


def test_mit_vectors_only_in_v5() -> None:
    raw = bytearray(build_report(version=3))
    raw[0x1F8] = 1  # reserved before v5
    with pytest.raises(SnpFormatError):
        AttestationReport.from_bytes(bytes(raw))
    assert AttestationReport.from_bytes(build_report(version=5)).launch_mit_vector == 11


def test_policy_and_key_info_bits() -> None:
    r = AttestationReport.from_bytes(
        build_report(policy=0x30000 | (1 << 19) | (1 << 18) | (1 << 25), signing_key=7)
    )
    assert r.policy.debug and r.policy.migrate_ma and r.policy.page_swap_disable and r.debug
    assert not r.policy.single_socket
    assert r.key_info.signing_key is SigningKey.NONE
    assert AttestationReport.from_bytes(build_report(signing_key=3)).key_info.signing_key is None


def _doc(fx: Path) -> dict:
    return json.loads((fx / "trustee/e2e_snp_evidence_genoa.json").read_bytes())


def test_evidence_json_strictness(fx: Path) -> None:
    text = (fx / "trustee/e2e_snp_evidence_genoa.json").read_text()
    ev = SnpEvidence.from_json(text)
    assert ev.cert_chain is not None and [e.cert_type for e in ev.cert_chain] == ["VCEK"]
    assert SnpEvidence.from_json(ev.to_json()) == ev

    dup = text.replace('{"attestation_report":', '{"cert_chain":null,"attestation_report":', 1)
    with pytest.raises(SnpFormatError, match="duplicate"):
        SnpEvidence.from_json(dup)

    d = _doc(fx)
    d["extra"] = 1
    with pytest.raises(SnpFormatError, match="unknown key"):
        SnpEvidence.from_json(d)

    d = _doc(fx)
    d["attestation_report"]["vmpl"] = "0"
    with pytest.raises(SnpFormatError, match="vmpl"):
        SnpEvidence.from_json(d)

    d = _doc(fx)
    d["attestation_report"]["measurement"] = d["attestation_report"]["measurement"][:-1]
    with pytest.raises(SnpFormatError, match="measurement"):
        SnpEvidence.from_json(d)

    for bad_byte in (True, 256, -1, 1.0, "1"):
        d = _doc(fx)
        d["attestation_report"]["measurement"][0] = bad_byte
        with pytest.raises(SnpFormatError, match="measurement"):
            SnpEvidence.from_json(d)
        d = _doc(fx)
        d["cert_chain"][0]["data"][5] = bad_byte
        with pytest.raises(SnpFormatError, match="data must contain bytes"):
            SnpEvidence.from_json(d)

    d = _doc(fx)
    d["attestation_report"]["current_tcb"]["fmc"] = 1  # fmc on a Genoa report
    with pytest.raises(SnpFormatError, match="fmc"):
        SnpEvidence.from_json(d)

    d = _doc(fx)
    d["cert_chain"][0]["cert_type"] = "BOGUS"
    with pytest.raises(SnpFormatError, match="cert_type"):
        SnpEvidence.from_json(d)

    d = _doc(fx)
    d["attestation_report"]["version"] = 9
    with pytest.raises(UnknownReportVersion):
        SnpEvidence.from_json(d)

    with pytest.raises(SnpFormatError, match="NaN"):
        SnpEvidence.from_json('{"attestation_report": NaN}')
    with pytest.raises(SnpFormatError, match="not valid JSON"):
        SnpEvidence.from_json("{")
