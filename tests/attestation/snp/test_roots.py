"""The pinned AMD roots shipped in attestation/snp/roots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.snp.certs import EndorsementCert, ProductRoots, TrustStore, load_certificates
from attestation.snp.errors import CertChainInvalid, CertificateFormatError
from attestation.snp.report import Product
from attestation.snp.verify import verify_report

from .synth import SynthPki
from .test_verify import TODAY, _load

ARK_SHA256_PREFIX = {
    Product.MILAN: "69d063b45344d26a",
    Product.GENOA: "4c6598d19c18719c",
    Product.TURIN: "1f084161a44bb6d9",
}


def _der(c) -> bytes:  # type: ignore[no-untyped-def]
    return c.public_bytes(Encoding.DER)


def test_builtin_roots_are_the_documented_ones(trust: TrustStore) -> None:
    assert set(trust.roots) == set(Product)
    for p, roots in trust.roots.items():
        assert hashlib.sha256(_der(roots.ark)).hexdigest().startswith(ARK_SHA256_PREFIX[p])
        assert roots.asvk is not None
        assert roots.ark.not_valid_after_utc.year >= 2045


def test_builtin_roots_equal_the_fixture_and_virtee_copies(fx: Path, trust: TrustStore) -> None:
    pkg = Path(__file__).resolve().parents[3] / "attestation/snp/roots"
    for p in Product:
        name = f"{p.value.lower()}_ask_ark_asvk.pem"
        assert (pkg / name).read_bytes() == (fx / "amd_roots" / name).read_bytes()
    for p, f in ((Product.MILAN, "cert_chain_milan"), (Product.TURIN, "cert_chain_turin")):
        ders = {_der(c) for c in load_certificates((fx / "virtee-sev" / f).read_bytes())}
        assert _der(trust.roots[p].ark) in ders and _der(trust.roots[p].ask) in ders


def test_bundle_checks(fx: Path, pki_milan: SynthPki, trust: TrustStore) -> None:
    pem = (fx / "amd_roots/milan_ask_ark_asvk.pem").read_bytes()
    with pytest.raises(CertificateFormatError, match="lacks ARK-Genoa"):
        ProductRoots.from_pem(Product.GENOA, pem)
    # a (synthetic) SEV-Milan ASK next to AMD's real ARK-Milan: the names fit, the signature does not
    mixed = pki_milan.roots.ask.public_bytes(Encoding.PEM) + trust.roots[Product.MILAN].ark.public_bytes(
        Encoding.PEM
    )
    with pytest.raises(CertChainInvalid, match="does not verify under its ARK"):
        ProductRoots.from_pem(Product.MILAN, mixed)
    assert ProductRoots.from_pem(Product.MILAN, pem).asvk is not None


def test_swapped_ark_and_ask_fail(fx: Path, trust: TrustStore) -> None:
    """trustee check_milan_chain_signature_failure: ARK and ASK toggled."""
    report, vcek = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    m = trust.roots[Product.MILAN]
    swapped = TrustStore({Product.MILAN: ProductRoots(Product.MILAN, ark=m.ask, ask=m.ark, asvk=m.asvk)})
    with pytest.raises(CertChainInvalid):
        verify_report(report, vcek, trust=swapped, now=TODAY)


def test_vcek_under_asvk_fails(fx: Path, trust: TrustStore) -> None:
    """The MANIFEST negative 'test-vcek.der checked against ASVK instead of ASK'."""
    report, vcek = _load(fx, "trustee/test-report.bin", "trustee/test-vcek.der")
    m = trust.roots[Product.MILAN]
    assert m.asvk is not None and not trust.signed_by(vcek.cert, m.asvk)
    asvk_as_ask = TrustStore({Product.MILAN: ProductRoots(Product.MILAN, ark=m.ark, ask=m.asvk, asvk=m.ask)})
    with pytest.raises(CertChainInvalid):
        verify_report(report, vcek, trust=asvk_as_ask, now=TODAY)


def test_signature_cache_only_remembers_successes(fx: Path) -> None:
    store = TrustStore.builtin()
    vcek = EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes())
    m, g = store.roots[Product.MILAN], store.roots[Product.GENOA]
    assert not store.signed_by(vcek.cert, g.ask)
    assert store.signed_by(vcek.cert, m.ask) and store.signed_by(vcek.cert, m.ask)
    assert not store.signed_by(vcek.cert, g.ask)
