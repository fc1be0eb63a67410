"""Intel TDX: DCAP quote parsing (v3/v4/v5), verification against the Intel SGX
Root CA with explicit time and collateral, TCB status, the guest attester
(configfs-tsm, /dev/tdx_guest, RTMR sysfs) and ``coco-verify tdx``."""

from attestation.tdx.attester import TdxAttester
from attestation.tdx.collateral import (
    Collateral,
    CollateralCache,
    CollateralError,
    PccsClient,
    StaticCollateral,
)
from attestation.tdx.quote import Quote
from attestation.tdx.report import TdReport
from attestation.tdx.verifier import TdxVerifier, VerifiedQuote, quote_claims, verify_quote

__all__ = [
    "Collateral",
    "CollateralCache",
    "CollateralError",
    "PccsClient",
    "Quote",
    "StaticCollateral",
    "TdReport",
    "TdxAttester",
    "TdxVerifier",
    "VerifiedQuote",
    "quote_claims",
    "verify_quote",
]
