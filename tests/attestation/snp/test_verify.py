"""Authenticity: real vectors verify; every kind of tampering is rejected with its own error."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import AttestationError
from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.errors import (
    CertChainInvalid,
    CertificateExpired,
    CertificateFormatError,
    ChipIdMismatch,
    HostDataMismatch,
    ReportDataMismatch,
    ReportSignatureInvalid,
    SigningKeyMismatch,
    TcbMismatch,
    WrongProductRoot,
)
from attestation.snp.report import AttestationReport, Product, SigningKey, TcbVersion
from attestation.snp.verify import check_binding, verify_report

from .synth import NOW, T_END, SynthPki, build_report, endorsement, sign

#: recorded vectors are verified as of a fixed date inside every VCEK's validity (Milan 2023-2030,
#: Genoa 2025-2032), so the suite does not start failing the day a recorded certificate expires
TODAY = datetime(2026, 1, 1, tzinfo=UTC)
BEFORE_VLEK_EXPIRY = datetime(2025, 6, 1, tzinfo=UTC)


def _load(fx: Path, rep: str, cert: str) -> tuple[AttestationReport, EndorsementCert]:
    raw = (fx / rep).read_bytes()
    if rep.endswith(".hex"):
        raw = bytes.fromhex(raw.decode().strip())
    return AttestationReport.from_bytes(raw), EndorsementCert.from_bytes((fx / cert).read_bytes())


POSITIVES = [
    ("trustee/test-report.bin", "trustee/test-vcek.der", TODAY, Product.MILAN, SigningKey.VCEK),
    ("virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der", TODAY, Product.MILAN, SigningKey.VCEK),
    (
        "trustee/DERIVED_e2e_report_genoa.bin",
        "trustee/DERIVED_e2e_vcek_genoa.der",
        TODAY,
        Product.GENOA,
        SigningKey.VCEK,
    ),
    (
        "trustee/test-vlek-report.bin",
        "trustee/test-vlek.der",
        BEFORE_VLEK_EXPIRY,
        Product.MILAN,
        SigningKey.VLEK,
    ),
]


@pytest.mark.parametrize(("rep", "cert", "at", "product", "kind"), POSITIVES)
def test_real_vectors_verify(fx: Path, trust: TrustStore, rep, cert, at, product, kind) -> None:
    report, key = _load(fx, rep, cert)
    v = verify_report(report, key, trust=trust, now=at)
    assert v.product is product and v.signing_key is kind
    assert v.verified_at == at
    assert v.ark.subject.rfc4514_string().endswith(
        f"CN=ARK-{product.value}"
    ) or f"ARK-{product.value}" in str(v.ark.subject)
    claims = v.claims()
    assert claims["product"] == product.value and claims["signing_key"] == kind.name.lower()
    assert claims["measurement"] == report.measurement.hex()


def test_expired_vlek_is_rejected_today(fx: Path, trust: TrustStore) -> None:
    report, key = _load(fx, "trustee/test-vlek-report.bin", "trustee/test-vlek.der")
    with pytest.raises(CertificateExpired, match="VLEK expired on 2025-12-10"):
        verify_report(report, key, trust=trust, now=TODAY)
    with pytest.raises(CertificateExpired, match="not valid before"):
        verify_report(report, key, trust=trust, now=datetime(2000, 1, 1, tzinfo=UTC))


def test_every_signed_byte_flip_is_rejected(fx: Path, trust: TrustStore) -> None:
    """Exhaustive: flipping any bit pattern in any of the 672 signed bytes is caught."""
    raw = (fx / "trustee/test-report.bin").read_bytes()
    key = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    verify_report(AttestationReport.from_bytes(raw), key, trust=trust, now=TODAY)  # warm the chain cache
    kinds: dict[str, int] = {}
    t0 = time.perf_counter()
    for off in range(0x2A0):
        bad = bytearray(raw)
        bad[off] ^= 0x01
        with pytest.raises(AttestationError) as ei:
            verify_report(AttestationReport.from_bytes(bytes(bad)), key, trust=trust, now=TODAY)
        kinds[type(ei.value).__name__] = kinds.get(type(ei.value).__name__, 0) + 1
    elapsed = time.perf_counter() - t0
    # reserved bytes fail parsing, REPORTED_TCB/CHIP_ID the VCEK cross-checks, the rest the signature
    assert set(kinds) == {
        "SnpFormatError",
        "UnknownReportVersion",
        "TcbMismatch",
        "ChipIdMismatch",
        "ReportSignatureInvalid",
    }, kinds
    assert kinds["ReportSignatureInvalid"] > 300
    assert elapsed < 30, f"672 rejections took {elapsed:.1f}s"


def test_every_signature_byte_flip_is_rejected(fx: Path, trust: TrustStore) -> None:
    raw = (fx / "trustee/test-report.bin").read_bytes()
    key = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    for off in list(range(0x2A0, 0x2A0 + 48)) + list(range(0x2E8, 0x2E8 + 48)):
        bad = bytearray(raw)
        bad[off] ^= 0x80
        with pytest.raises(ReportSignatureInvalid):
            verify_report(AttestationReport.from_bytes(bytes(bad)), key, trust=trust, now=TODAY)


def test_reported_tcb_flip_is_a_tcb_mismatch(fx: Path, trust: TrustStore) -> None:
    raw = bytearray((fx / "trustee/test-report.bin").read_bytes())
    raw[0x180] += 1  # upstream's check_report_tcb_failure
    key = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    with pytest.raises(TcbMismatch, match="bootloader=4"):
        verify_report(AttestationReport.from_bytes(bytes(raw)), key, trust=trust, now=TODAY)


def test_vcek_of_another_chip(fx: Path, trust: TrustStore) -> None:
    report, _ = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    other = EndorsementCert.from_bytes((fx / "virtee-sev/vcek_milan.der").read_bytes())
    with pytest.raises(ChipIdMismatch):
        verify_report(report, other, trust=trust, now=TODAY)


@pytest.mark.parametrize("name", ["test-vcek-invalid-new.der", "test-vcek-invalid-legacy.der"])
def test_edited_vceks_fail_the_chain(fx: Path, trust: TrustStore, name: str) -> None:
    report, _ = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    edited = EndorsementCert.from_bytes((fx / "trustee" / name).read_bytes())
    assert edited.hwid == bytes(range(64))  # raw (legacy) and OCTET STRING (new) forms both parse
    with pytest.raises(CertChainInvalid, match="ASK-Milan"):
        verify_report(report, edited, trust=trust, now=TODAY)


def test_wrong_product_root(fx: Path, trust: TrustStore) -> None:
    genoa_report, _ = _load(fx, "trustee/DERIVED_e2e_report_genoa.bin", "trustee/DERIVED_e2e_vcek_genoa.der")
    milan_vcek = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    with pytest.raises(WrongProductRoot, match="Milan root, but the report is from Genoa"):
        verify_report(genoa_report, milan_vcek, trust=trust, now=TODAY)


def test_roots_without_the_product(fx: Path, trust: TrustStore) -> None:
    report, key = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    genoa_only = TrustStore({Product.GENOA: trust.roots[Product.GENOA]})
    with pytest.raises(CertChainInvalid):
        verify_report(report, key, trust=genoa_only, now=TODAY)


def test_vcek_checked_against_asvk_fails(fx: Path, trust: TrustStore) -> None:
    """A VCEK presented for a VLEK-signed report: the kinds disagree."""
    vlek_report, _ = _load(fx, "trustee/test-vlek-report.bin", "trustee/test-vlek.der")
    vcek = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    with pytest.raises(SigningKeyMismatch, match="signed by the VLEK"):
        verify_report(vlek_report, vcek, trust=trust, now=BEFORE_VLEK_EXPIRY)


def test_turin_vcek_parses_and_chains(fx: Path, trust: TrustStore) -> None:
    t = EndorsementCert.from_bytes((fx / "virtee-sev/vcek_turin.der").read_bytes())
    assert t.kind is SigningKey.VCEK and t.product_name == "Turin" and t.struct_version == 1
    assert t.fmc is not None and t.hwid is not None and len(t.hwid) == 8
    assert trust.signed_by(t.cert, trust.roots[Product.TURIN].ask)
    assert not trust.signed_by(t.cert, trust.roots[Product.MILAN].ask)


def test_non_amd_certificates_are_rejected(fx: Path, trust: TrustStore) -> None:
    with pytest.raises(CertificateFormatError, match="neither SEV-VCEK nor SEV-VLEK"):
        EndorsementCert.from_certificate(trust.roots[Product.MILAN].ask)
    with pytest.raises(CertificateFormatError):
        EndorsementCert.from_bytes(b"not a certificate")


def test_binding(fx: Path, trust: TrustStore) -> None:
    report, key = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    v = verify_report(report, key, trust=trust, now=TODAY)
    nonce = bytes.fromhex("ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2")
    check_binding(v, expected_report_data=nonce)  # zero-padded to 64
    check_binding(v, expected_report_data=nonce + bytes(32))
    with pytest.raises(ReportDataMismatch):
        check_binding(v, expected_report_data=nonce[:-1] + b"\0")
    with pytest.raises(ReportDataMismatch, match="longer than 64"):
        check_binding(v, expected_report_data=nonce * 3)
    check_binding(v, expected_init_data_hash=report.host_data)
    with pytest.raises(HostDataMismatch):
        check_binding(v, expected_init_data_hash=b"\x01" * 32)


# ---- synthetic PKI: cases no public vector covers --------------------------------------


def _tcb(product: Product, **kw: int) -> TcbVersion:
    base = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    base.update(kw)
    fmc = base.pop("fmc", 1) if product is Product.TURIN else None
    return TcbVersion.build(fmc=fmc, **base)


def test_synthetic_tcb_mismatch_with_valid_signature(pki_milan: SynthPki) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(tcb=_tcb(Product.MILAN, snp=9), hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(sign(build_report(tcb=tcb), key))
    with pytest.raises(TcbMismatch, match="snp=8 but the VCEK is for snp=9"):
        verify_report(report, endorsement(der), trust=pki_milan.trust(), now=NOW)


def test_synthetic_chip_id_mismatch_with_valid_signature(pki_milan: SynthPki) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(tcb=tcb, hwid=b"\x42" * 64)
    report = AttestationReport.from_bytes(sign(build_report(tcb=tcb), key))
    with pytest.raises(ChipIdMismatch):
        verify_report(report, endorsement(der), trust=pki_milan.trust(), now=NOW)


def test_synthetic_raw_legacy_hwid_verifies(pki_milan: SynthPki) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(tcb=tcb, hwid=bytes(range(64)), raw_hwid=True)
    report = AttestationReport.from_bytes(sign(build_report(tcb=tcb), key))
    assert verify_report(report, endorsement(der), trust=pki_milan.trust(), now=NOW).product is Product.MILAN


def test_synthetic_turin_v5_verifies_and_checks_fmc(pki_turin: SynthPki) -> None:
    tcb = _tcb(Product.TURIN, fmc=2)
    key, der = pki_turin.leaf(tcb=tcb, hwid=bytes(range(8)))
    report = AttestationReport.from_bytes(sign(build_report(version=5, product=Product.TURIN, tcb=tcb), key))
    v = verify_report(report, endorsement(der), trust=pki_turin.trust(), now=NOW)
    assert v.product is Product.TURIN and v.trustee_claims()["reported_tcb_fmc"] == 2

    key2, der2 = pki_turin.leaf(tcb=_tcb(Product.TURIN, fmc=3), hwid=bytes(range(8)))
    report2 = AttestationReport.from_bytes(
        sign(build_report(version=5, product=Product.TURIN, tcb=tcb), key2)
    )
    with pytest.raises(TcbMismatch, match="fmc=2"):
        verify_report(report2, endorsement(der2), trust=pki_turin.trust(), now=NOW)


def test_synthetic_vlek_and_key_kind_checks(pki_milan: SynthPki) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(vlek=True, tcb=tcb)
    good = AttestationReport.from_bytes(sign(build_report(tcb=tcb, signing_key=1), key))
    v = verify_report(good, endorsement(der), trust=pki_milan.trust(), now=NOW)
    assert v.signing_key is SigningKey.VLEK and v.endorsement.csp_id == "CN=synthetic-csp.example"
    # same key, but the report claims a VCEK signed it
    wrong_kind = AttestationReport.from_bytes(sign(build_report(tcb=tcb, signing_key=0), key))
    with pytest.raises(SigningKeyMismatch):
        verify_report(wrong_kind, endorsement(der), trust=pki_milan.trust(), now=NOW)
    unsigned = AttestationReport.from_bytes(sign(build_report(tcb=tcb, signing_key=7), key))
    with pytest.raises(SigningKeyMismatch, match="not signed"):
        verify_report(unsigned, endorsement(der), trust=pki_milan.trust(), now=NOW)


def test_synthetic_expired_intermediate() -> None:
    pki = SynthPki.create(Product.GENOA, ask_not_after=datetime(2025, 1, 1, tzinfo=UTC))
    tcb = _tcb(Product.GENOA)
    key, der = pki.leaf(tcb=tcb, hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(sign(build_report(product=Product.GENOA, tcb=tcb), key))
    with pytest.raises(CertificateExpired, match="ASK-Genoa expired"):
        verify_report(report, endorsement(der), trust=pki.trust(), now=NOW)
    assert verify_report(report, endorsement(der), trust=pki.trust(), now=datetime(2024, 6, 1, tzinfo=UTC))
    with pytest.raises(CertificateExpired):
        verify_report(report, endorsement(der), trust=pki.trust(), now=T_END.replace(year=2041))


def test_synthetic_v2_product_comes_from_the_chain(pki_milan: SynthPki) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(tcb=tcb, hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(sign(build_report(version=2, product=None, tcb=tcb), key))
    assert verify_report(report, endorsement(der), trust=pki_milan.trust(), now=NOW).product is Product.MILAN
    # the productName extension must agree with the root the chain ends in
    key2, der2 = pki_milan.leaf(tcb=tcb, hwid=bytes(range(64)), product_name="Genoa")
    report2 = AttestationReport.from_bytes(sign(build_report(version=2, product=None, tcb=tcb), key2))
    with pytest.raises((WrongProductRoot, CertChainInvalid)):
        verify_report(report2, endorsement(der2), trust=pki_milan.trust(), now=NOW)


def test_synthetic_root_is_not_trusted_by_builtin_store(pki_milan: SynthPki, trust: TrustStore) -> None:
    tcb = _tcb(Product.MILAN)
    key, der = pki_milan.leaf(tcb=tcb, hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(sign(build_report(tcb=tcb), key))
    with pytest.raises(CertChainInvalid):
        verify_report(report, endorsement(der), trust=trust, now=NOW)
