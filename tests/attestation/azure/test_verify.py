"""az-snp-vtpm / az-tdx-vtpm verification on trustee's recorded Azure evidence
(tests/fixtures/evidence/az-*-vtpm, MANIFEST.md there), with byte-flip
negatives for every signed or bound region."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from attestation.azure.errors import AzureBindingError, HclFormatError
from attestation.azure.evidence import AzSnpEvidence, AzTdxEvidence
from attestation.azure.hcl import HclReport, HwReportType
from attestation.azure.kbs import AzSnpVtpmVerifier, AzTdxVtpmVerifier
from attestation.errors import EvidenceFormatError, VerificationError
from attestation.snp.errors import ChipIdMismatch, ReportSignatureInvalid, TcbMismatch, WrongProductRoot
from attestation.tpm.errors import QuoteSignatureInvalid, TpmVerificationError
from attestation.tpm.quote import init_data_pcr_value
from attestation.verifier import EvidenceVerifier

from ._data import (
    AT,
    SNP,
    SNP_GENOA_RD,
    SNP_V2_PCR0,
    SNP_V2_RD,
    TDX,
    load,
)

CHALLENGE = b"challenge"

SNP_CASES = [
    ("evidence-v0.json", CHALLENGE, "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
    ("evidence-v1.json", CHALLENGE, "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
    ("evidence-v2.json", SNP_V2_RD, SNP_V2_PCR0),
    ("evidence-genoa.json", SNP_GENOA_RD, "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"),
]


def _snp(doc: Any, rd: bytes = CHALLENGE, init: bytes | None = None) -> dict[str, Any]:
    return AzSnpVtpmVerifier().verify(doc, expected_report_data=rd, expected_init_data_hash=init, now=AT)


def _tdx(doc: Any, rd: bytes = CHALLENGE, init: bytes | None = None) -> dict[str, Any]:
    return AzTdxVtpmVerifier().verify(doc, expected_report_data=rd, expected_init_data_hash=init, now=AT)


def test_contract() -> None:
    assert isinstance(AzSnpVtpmVerifier(), EvidenceVerifier)
    assert isinstance(AzTdxVtpmVerifier(), EvidenceVerifier)
    assert (AzSnpVtpmVerifier().tee, AzTdxVtpmVerifier().tee) == ("az-snp-vtpm", "az-tdx-vtpm")


@pytest.mark.parametrize(("name", "rd", "pcr0"), SNP_CASES)
def test_snp_real_evidence_verifies_with_trustee_claims(name: str, rd: bytes, pcr0: str) -> None:
    claims = _snp(load(SNP / name), rd)
    # values trustee's own unit tests assert for the same files
    assert claims["report_data"] == rd.hex()
    assert claims["tpm"]["pcr00"] == pcr0
    assert len(claims["tpm"]) == 24
    assert claims["init_data"] == claims["tpm"]["pcr08"]
    # trustee's az-snp claim types: strings throughout, measurement base64
    assert claims["policy_debug_allowed"] == "false"
    assert claims["policy_abi_major"].isdigit()
    assert len(base64.b64decode(claims["measurement"])) == 48
    assert set(claims) >= {"reported_tcb_snp", "reported_tcb_microcode", "platform_smt_enabled"}


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_tdx_real_evidence_verifies_to_the_intel_root(name: str) -> None:
    claims = _tdx(load(TDX / name))
    assert claims["report_data"] == CHALLENGE.hex()
    assert claims["tpm"]["pcr00"] == "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
    assert claims["quote"]["header"]["tee_type"] == "81000000"
    assert claims["tcb_status"] is None  # no collateral configured: authenticity only
    assert claims["init_data"] == claims["tpm"]["pcr08"]


def test_nonce_must_match() -> None:
    with pytest.raises(TpmVerificationError, match="nonce"):
        _snp(load(SNP / "evidence-v1.json"), b"challengf")
    with pytest.raises(TpmVerificationError, match="nonce"):
        _tdx(load(TDX / "evidence-v1.json"), b"")


def test_v2_user_data_must_match() -> None:
    doc = load(SNP / "evidence-v2.json")
    ud = HclReport.from_bytes(AzSnpEvidence.from_json(doc).hcl_report).user_data()
    assert ud == SNP_V2_RD + bytes(16)  # 64 bytes, zero-padded
    # v1 evidence (nonce "challenge", no user-data) relabelled v2: the quote still
    # verifies, the v2 user-data check does not
    v1 = load(SNP / "evidence-v1.json")
    assert _snp(v1)["report_data"] == CHALLENGE.hex()
    v1["version"] = 2
    with pytest.raises(AzureBindingError, match="user-data"):
        _snp(v1)


def test_init_data_is_pcr8() -> None:
    doc = load(SNP / "evidence-v1.json")
    with pytest.raises(TpmVerificationError, match="PCR 8"):
        _snp(doc, init=hashlib.sha256(b"init").digest())
    with pytest.raises(TpmVerificationError, match="SHA-256"):
        _snp(doc, init=bytes(48))
    # PCR 8 of the genoa vector is non-zero: find the digest that produced it is impossible,
    # but the helper must agree with trustee's formula on trustee's own example
    assert (
        init_data_pcr_value(
            bytes.fromhex("8505e4e25e50a27c5dc8147af88efbece627fbea55291911eff832d9ee127781")
        ).hex()
        == "bddaccb9c52249e97a31baea61b7d91be8221a16e703d92148d04fb8e9c1dfdd"
    )


# --- byte flips in each signed / bound region -------------------------------------


def _mutate_v1(path: Any, field: str, fn: Callable[[bytearray], None]) -> dict[str, Any]:
    doc = load(path)
    if field in ("signature", "message"):
        b = bytearray(bytes.fromhex(doc["tpm_quote"][field]))
        fn(b)
        doc["tpm_quote"][field] = b.hex()
    elif field == "pcr":
        b = bytearray(bytes.fromhex(doc["tpm_quote"]["pcrs"][3]))
        fn(b)
        doc["tpm_quote"]["pcrs"][3] = b.hex()
    else:
        raw = base64.urlsafe_b64decode(doc[field])
        b = bytearray(raw)
        fn(b)
        doc[field] = base64.urlsafe_b64encode(bytes(b)).decode()
    out: dict[str, Any] = doc
    return out


def _flip(offset: int) -> Callable[[bytearray], None]:
    def f(b: bytearray) -> None:
        b[offset] ^= 0x01

    return f


HCL_SNP = 32  # SNP report offset inside the HCL report
VAR = 1236  # runtime data offset


@pytest.mark.parametrize(
    ("field", "offset", "error"),
    [
        ("signature", 0, QuoteSignatureInvalid),
        ("signature", 255, QuoteSignatureInvalid),
        ("message", 40, QuoteSignatureInvalid),  # clock info inside TPMS_ATTEST
        ("message", -1, QuoteSignatureInvalid),  # last byte of pcrDigest
        ("pcr", 0, TpmVerificationError),  # value not covered by pcrDigest
        ("hcl_report", HCL_SNP + 0x90, ReportSignatureInvalid),  # MEASUREMENT
        ("hcl_report", HCL_SNP + 0x50 + 40, ReportSignatureInvalid),  # REPORT_DATA beyond the hash
        ("hcl_report", HCL_SNP + 0x50, AzureBindingError),  # REPORT_DATA: runtime-data digest
        ("hcl_report", HCL_SNP + 0x2A0, ReportSignatureInvalid),  # signature R
        ("hcl_report", HCL_SNP + 0x1A0 + 5, ChipIdMismatch),  # CHIP_ID vs the VCEK hwID
        ("hcl_report", HCL_SNP + 0x0C0, ReportSignatureInvalid),  # HOST_DATA
        ("hcl_report", VAR + 300, QuoteSignatureInvalid),  # AK modulus in the runtime data
        ("hcl_report", VAR + 1000, AzureBindingError),  # runtime data outside the AK: digest
    ],
)
def test_snp_byte_flip_negatives(field: str, offset: int, error: type[Exception]) -> None:
    doc = _mutate_v1(SNP / "evidence-v1.json", field, _flip(offset))
    with pytest.raises(error):
        _snp(doc)


def test_snp_tcb_mismatch_like_trustee() -> None:
    # trustee's test_verify_snp_report_failure: REPORTED_TCB.snp zeroed (HCL byte 0x1a6)
    def zero(b: bytearray) -> None:
        b[0x01A6] = 0

    doc = _mutate_v1(SNP / "evidence-v1.json", "hcl_report", zero)
    with pytest.raises(TcbMismatch):
        _snp(doc)


def test_snp_vcek_of_another_product_is_refused() -> None:
    doc = load(SNP / "evidence-v1.json")
    doc["vcek"] = base64.urlsafe_b64encode(load(SNP / "evidence-genoa.json")["vcek"].encode()).decode()
    with pytest.raises((WrongProductRoot, ChipIdMismatch, TcbMismatch)):
        _snp(doc)


@pytest.mark.parametrize(
    ("field", "offset", "error"),
    [
        ("signature", 7, QuoteSignatureInvalid),
        ("message", 30, QuoteSignatureInvalid),
        ("pcr", 31, TpmVerificationError),
        ("td_quote", 48 + 136, VerificationError),  # MRTD in the TD body (quote signature)
        ("td_quote", 48 + 520, VerificationError),  # REPORTDATA
        ("td_quote", 700, VerificationError),  # quote signature
        ("hcl_report", VAR + 900, AzureBindingError),  # runtime data digest in REPORTDATA
        ("hcl_report", VAR + 300, QuoteSignatureInvalid),  # AK modulus
    ],
)
def test_tdx_byte_flip_negatives(field: str, offset: int, error: type[Exception]) -> None:
    doc = _mutate_v1(TDX / "evidence-v1.json", field, _flip(offset))
    with pytest.raises(error):
        _tdx(doc)


def test_report_type_must_fit_the_tee() -> None:
    snp_doc = load(SNP / "evidence-v1.json")
    tdx_doc = load(TDX / "evidence-v1.json")
    tdx_as_snp = dict(snp_doc, hcl_report=tdx_doc["hcl_report"])
    with pytest.raises(EvidenceFormatError, match="TDX report, SNP expected"):
        _snp(tdx_as_snp)
    snp_as_tdx = dict(tdx_doc, hcl_report=snp_doc["hcl_report"])
    with pytest.raises(EvidenceFormatError, match="SNP report, TDX expected"):
        _tdx(snp_as_tdx)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=3),
        lambda d: d.update(version=True),
        lambda d: d.update(extra=1),
        lambda d: d.pop("vcek"),
        lambda d: d.update(hcl_report="***"),
        lambda d: d.update(hcl_report=base64.urlsafe_b64encode(b"HCLA" + bytes(100)).decode()),
        lambda d: d["tpm_quote"].update(pcrs=["00"] * 25),
        lambda d: d["tpm_quote"].update(message="zz"),
        lambda d: d["tpm_quote"].update(message="ff544347"),
    ],
)
def test_malformed_evidence_is_a_format_error(mutate: Callable[[dict[str, Any]], None]) -> None:
    doc = load(SNP / "evidence-v1.json")
    mutate(doc)
    with pytest.raises(EvidenceFormatError):
        _snp(doc)


def test_non_json_and_oversized() -> None:
    with pytest.raises(EvidenceFormatError):
        _snp(b"not json")
    with pytest.raises(EvidenceFormatError):
        _snp(b"[" * 300_000)
    with pytest.raises(EvidenceFormatError):
        _tdx(json.dumps({"version": 1}).encode())


def test_hcl_parser() -> None:
    raw = (SNP / "hcl-report.bin").read_bytes()
    hcl = HclReport.from_bytes(raw)
    assert hcl.report_type is HwReportType.SNP
    assert hcl.var_data_sha256 == hcl.hw_report[0x50 : 0x50 + 32]
    assert hcl.ak_public().key_size == 2048
    tdx = HclReport.from_bytes((TDX / "hcl-report.bin").read_bytes())
    assert tdx.report_type is HwReportType.TDX and len(tdx.hw_report) == 1024
    for bad in (raw[:1000], b"XXXX" + raw[4:], raw[:1236] + b"{"):
        with pytest.raises(HclFormatError):
            HclReport.from_bytes(bad)
    # hash type other than SHA-256
    with pytest.raises(HclFormatError, match="SHA-256"):
        HclReport.from_bytes(raw[:1228] + (2).to_bytes(4, "little") + raw[1232:])


def test_tdx_v0_and_v1_hold_the_same_evidence() -> None:
    v0 = AzTdxEvidence.from_json(load(TDX / "evidence-v0.json"))
    v1 = AzTdxEvidence.from_json(load(TDX / "evidence-v1.json"))
    assert v0.td_quote == v1.td_quote and v0.tpm_quote == v1.tpm_quote and v0.version == 0


def test_insecure_binding_skip_is_marked() -> None:
    v = AzSnpVtpmVerifier(insecure_skip_report_data_binding="replaying a recorded vector in a test")
    claims = v.verify(
        load(SNP / "evidence-v1.json"), expected_report_data=b"x" * 48, expected_init_data_hash=None, now=AT
    )
    assert claims["insecure_report_data_binding_skipped"] is True
    with pytest.raises(ValueError):
        AzSnpVtpmVerifier(insecure_skip_report_data_binding=" ")
