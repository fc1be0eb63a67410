"""Intel TDX (and SGX) DCAP quote verification, written in Python on
``cryptography``, with trust material and time passed in explicitly.

Why not build on dcap-qvl (PyPI 0.7.0, tried in this venv)? Its Python API
verifies only *with* full collateral: there is no authenticity-only mode
(quote signature, QE binding, PCK chain) for quotes whose collateral is not at
hand, and it rejects DEBUG TDs and TCB levels it cannot match inside the same
call, so a caller cannot separate authenticity from policy as
:mod:`attestation.verifier` requires. It is also opaque (Rust) about which
step failed. We keep dcap-qvl as an independent oracle instead: the tests
check that our TCB statuses and advisory IDs equal dcap-qvl's on every
fixture with collateral, and ``bench/tdx_verify.py`` compares speed.

Steps (:func:`verify_quote`): parse; header checks (ECDSA-P256 key, Intel QE
vendor); PCK chain to the pinned Intel SGX Root CA at ``now`` (with CRLs when
the collateral has them); QE report signature by the PCK key; QE report data
binding ``SHA-256(attestation key || QE auth data) || 0^32``; quote signature
by the attestation key over header+body. With collateral: collateral
signatures, chains, CRLs and freshness at ``now``, then the TCB status
(:func:`attestation.tdx.tcb.evaluate_tcb`). The KBS adapter (evidence JSON,
bindings, claims) is :mod:`attestation.tdx.kbs`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.tdx.collateral import Collateral, verify_collateral
from attestation.tdx.errors import TdxFormatError, TdxVerificationError
from attestation.tdx.pck import (
    PckExtension,
    load_pem_chain,
    parse_pck_extension,
    pck_ca_kind,
    verify_chain,
    verify_p256_raw,
)
from attestation.tdx.quote import INTEL_QE_VENDOR_ID, Quote
from attestation.tdx.tcb import TcbResult, evaluate_tcb

__all__ = ["VerifiedQuote", "verify_quote"]


@dataclass(frozen=True)
class VerifiedQuote:
    quote: Quote
    pck: PckExtension
    #: "platform" or "processor" (the PCK intermediate CA)
    pck_ca: str
    #: None when verified without collateral
    tcb: TcbResult | None


def verify_quote(
    untrusted_quote: bytes,
    *,
    root_ca: x509.Certificate,
    now: datetime,
    collateral: Collateral | None = None,
) -> VerifiedQuote:
    """Verify a DCAP quote's authenticity (and TCB status when ``collateral``
    is given) as of ``now``. Raises :class:`~attestation.tdx.errors.TdxVerificationError` or
    :class:`~attestation.tdx.errors.TdxFormatError`; returns the verified quote."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        return _verify_quote(untrusted_quote, root_ca=root_ca, now=now, collateral=collateral)
    # malformed certificates/keys inside cryptography (an unknown key algorithm is UnsupportedAlgorithm)
    except (ValueError, TypeError, RecursionError, UnsupportedAlgorithm) as exc:
        raise TdxFormatError(
            f"malformed certificate or key material in the quote: {type(exc).__name__}"
        ) from exc


def _verify_quote(
    untrusted_quote: bytes, *, root_ca: x509.Certificate, now: datetime, collateral: Collateral | None
) -> VerifiedQuote:
    quote = Quote.from_bytes(untrusted_quote)
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise TdxVerificationError("quote is not from an Intel quoting enclave (QE vendor ID)")
    sd = quote.signature_data

    verified_coll = verify_collateral(collateral, root=root_ca, now=now) if collateral is not None else None

    chain = load_pem_chain(sd.certification_data.pck_chain_pem(), "PCK chain")
    pck_ca = pck_ca_kind(chain)
    leaf = verify_chain(
        chain,
        root=root_ca,
        now=now,
        crls=verified_coll.crls if verified_coll else (),
        what="PCK chain",
    )
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise TdxVerificationError("PCK certificate key is not ECDSA")
    verify_p256_raw(pck_key, sd.qe_report_signature, sd.qe_report.raw, "QE report (by the PCK key)")

    expected = hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest() + bytes(32)
    if sd.qe_report.report_data != expected:
        raise TdxVerificationError("QE report does not bind the attestation key (QE report data mismatch)")

    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + sd.attestation_key)
    except ValueError as exc:
        raise TdxVerificationError("attestation key is not a P-256 point") from exc
    verify_p256_raw(att_key, sd.signature, quote.signed_bytes, "quote (by the attestation key)")

    pck = parse_pck_extension(leaf)
    tcb = evaluate_tcb(quote, pck, verified_coll) if verified_coll is not None else None
    return VerifiedQuote(quote=quote, pck=pck, pck_ca=pck_ca, tcb=tcb)
