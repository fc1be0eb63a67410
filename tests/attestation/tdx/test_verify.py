"""Authenticity checks: real quotes verify, altered or re-rooted ones do not."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError
from attestation.tdx.pck import INTEL_SGX_ROOT_CA_SHA256, intel_sgx_root_ca
from attestation.tdx.quote import Quote
from attestation.tdx.verify import verify_quote

from ._data import ALL_QUOTES, FIXED_NOW, Q4, Q5
from ._forge import LATER, forge_quote, make_pki

ROOT = intel_sgx_root_ca()


def test_packaged_root_is_the_pinned_intel_root() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = ROOT.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    fixture = (Path(Q4).parents[1] / "dcap-qvl/TrustedRootCA.der").read_bytes()
    assert der == fixture


@pytest.mark.parametrize("path", ALL_QUOTES, ids=lambda p: p.name)
def test_real_quotes_verify(path: Path) -> None:
    v = verify_quote(path.read_bytes(), root_ca=ROOT, now=FIXED_NOW)
    assert v.tcb is None
    assert len(v.pck.fmspc) == 6


def _signed_region_offsets(data: bytes) -> list[int]:
    q = Quote.from_bytes(data)
    n = len(q.signed_bytes)
    sd_start = n + 4
    # header, body, quote sig, attestation key, QE report, QE report sig, auth data, PCK chain
    offs = [5, 30, 100, 300, n - 1, sd_start + 10, sd_start + 100, sd_start + 200, sd_start + 400]
    offs += [sd_start + 134 + 384 + 10, sd_start + 134 + 384 + 64 + 5]
    pem_start = data.index(b"-----BEGIN CERTIFICATE-----")
    offs += [pem_start + 100, pem_start + 700]
    return offs


@pytest.mark.parametrize("path", [Q4, Q5], ids=lambda p: p.name)
def test_flipped_bytes_in_signed_parts_are_rejected(path: Path) -> None:
    data = path.read_bytes()
    for off in _signed_region_offsets(data):
        bad = bytearray(data)
        bad[off] ^= 0x01
        with pytest.raises((VerificationError, EvidenceFormatError)):
            verify_quote(bytes(bad), root_ca=ROOT, now=FIXED_NOW)


def test_expired_pck_certificate_is_rejected() -> None:
    with pytest.raises(VerificationError, match="not valid at"):
        verify_quote(Q4.read_bytes(), root_ca=ROOT, now=datetime(2045, 1, 1, tzinfo=UTC))


def test_forged_quote_verifies_only_under_its_own_root() -> None:
    pki = make_pki(Q4.read_bytes())
    forged = forge_quote(Q4.read_bytes(), pki)
    v = verify_quote(forged, root_ca=pki.root, now=LATER)  # the forge itself is consistent
    assert v.quote.td_body.mr_td == Quote.from_bytes(Q4.read_bytes()).td_body.mr_td
    with pytest.raises(VerificationError, match="not the trusted Intel SGX Root CA"):
        verify_quote(forged, root_ca=ROOT, now=LATER)


def test_qe_binding_mismatch_with_valid_signatures() -> None:
    pki = make_pki(Q4.read_bytes())
    forged = forge_quote(Q4.read_bytes(), pki, qe_report_data=bytes(64))
    with pytest.raises(VerificationError, match="QE report data"):
        verify_quote(forged, root_ca=pki.root, now=LATER)


def test_revoked_pck_leaf_is_rejected_via_collateral_crl() -> None:
    from attestation.tdx.pck import load_pem_chain, verify_chain

    pki = make_pki(Q4.read_bytes())
    chain = load_pem_chain(pki.chain_pem(), "t")
    verify_chain(chain, root=pki.root, now=LATER, crls=[pki.crl([])], what="t")
    with pytest.raises(VerificationError, match="revoked"):
        verify_chain(chain, root=pki.root, now=LATER, crls=[pki.crl([pki.leaf.serial_number])], what="t")
    with pytest.raises(VerificationError, match="revoked"):
        verify_chain(
            chain, root=pki.root, now=LATER, crls=[pki.crl([pki.inter.serial_number], by_root=True)], what="t"
        )


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        verify_quote(Q4.read_bytes(), root_ca=ROOT, now=datetime(2026, 1, 1))


def test_errors_share_the_package_root() -> None:
    with pytest.raises(AttestationError):
        verify_quote(b"\x04\x00" + bytes(10), root_ca=ROOT, now=FIXED_NOW)


def test_v5_td10_body_verifies_when_signed() -> None:
    from .test_quote import _as_v5

    v5 = _as_v5(Q4.read_bytes(), 2)
    pki = make_pki(Q4.read_bytes())
    forged = forge_quote(v5, pki)
    v = verify_quote(forged, root_ca=pki.root, now=LATER)
    assert (
        v.quote.header.version == 5
        and v.quote.td_body.report_data == Quote.from_bytes(Q4.read_bytes()).report_data
    )
