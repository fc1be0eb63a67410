"""Errors raised by :mod:`attestation.tdx` (the DCAP quote code here also
serves SGX and Azure TDX evidence).

One root, :class:`TdxError`; each class also subclasses the shared
:mod:`attestation.errors` category it belongs to (in brackets), so callers
that only know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── TdxError ....................... root of this package (device and ioctl failures)
        ├── TdxFormatError ............. (EvidenceFormatError) quote, TDREPORT, evidence
        │   │                            JSON, PCK certificate or policy that does not parse
        │   └── UnknownQuoteFormat ..... not a DCAP quote this code reads (attestation
        │                                key type, version)
        ├── TdxVerificationError ....... (VerificationError) signature, PCK chain, QE
        │   │                            binding, REPORTDATA / MRCONFIGID binding, TCB level
        │   └── CollateralError ........ collateral missing, malformed, not authentic,
        │                                stale, or not for this quote's platform
        ├── TdxPolicyViolation ......... (PolicyViolation) authentic quote the policy
        │                                does not accept
        └── TdxDeviceUnavailable ....... (UnsupportedPlatform) no configfs-tsm /
                                         /dev/tdx_guest here

Messages never contain secrets; quote fields are public by construction.
"""

from __future__ import annotations

from attestation.errors import (
    AttestationError,
    EvidenceFormatError,
    PolicyViolation,
    UnsupportedPlatform,
    VerificationError,
)

__all__ = [
    "CollateralError",
    "TdxDeviceUnavailable",
    "TdxError",
    "TdxFormatError",
    "TdxPolicyViolation",
    "TdxVerificationError",
    "UnknownQuoteFormat",
]


class TdxError(AttestationError):
    """Root of every error raised by :mod:`attestation.tdx` (a device or ioctl failure itself)."""


class TdxFormatError(TdxError, EvidenceFormatError):
    """TDX (or SGX DCAP) bytes or JSON are malformed."""


class UnknownQuoteFormat(TdxFormatError):
    """The bytes are not a DCAP quote this code reads: another attestation key type
    or quote version (an SNP report, say)."""


class TdxVerificationError(TdxError, VerificationError):
    """The quote parsed but is not authentic, not bound as expected, or its TCB is unusable."""


class CollateralError(TdxVerificationError):
    """Collateral is missing, malformed, not authentic, stale, or does not fit the quote."""


class TdxPolicyViolation(TdxError, PolicyViolation):
    """An authentic quote that the appraisal policy rejects."""


class TdxDeviceUnavailable(TdxError, UnsupportedPlatform):
    """Neither configfs-tsm (provider tdx_guest) nor /dev/tdx_guest is usable."""
