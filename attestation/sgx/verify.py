"""Authenticity of an SGX DCAP quote (version 3): the DCAP checks are
:mod:`attestation.tdx`'s (PCK chain to the Intel SGX Root CA, QE binding,
quote signature; TCB status when collateral is configured); this module
insists the quote is an SGX one."""

from __future__ import annotations

from datetime import datetime

from attestation.sgx.errors import SgxVerificationError
from attestation.tdx.kbs import TdxVerifier
from attestation.tdx.quote import EnclaveReport
from attestation.tdx.verify import VerifiedQuote

__all__ = ["verify_sgx_quote"]


def verify_sgx_quote(quote: bytes, *, dcap: TdxVerifier, now: datetime) -> VerifiedQuote:
    """Verify ``quote`` with ``dcap``; raise SgxVerificationError for a TDX quote."""
    v = dcap.verify_quote_bytes(quote, now=now)
    if not isinstance(v.quote.body, EnclaveReport):
        raise SgxVerificationError("expected an SGX quote (v3), got a TDX quote")
    return v
