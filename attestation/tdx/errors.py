"""Errors raised by :mod:`attestation.tdx` (the DCAP quote code here also
serves SGX and Azure TDX evidence).

Every error here subclasses one of the shared :mod:`attestation.errors`
classes, so callers that only know the shared tree keep working::

    AttestationError
    ├── EvidenceFormatError
    │   └── TdxFormatError ........ quote, TDREPORT, evidence JSON, PCK certificate or
    │       │                       policy file that does not parse
    │       └── UnknownQuoteFormat  not a DCAP quote this code reads (attestation
    │                               key type, version)
    ├── VerificationError
    │   └── TdxVerificationError .. signature, PCK chain, QE binding, REPORTDATA /
    │       │                       MRCONFIGID binding, event log replay, TCB level
    │       └── CollateralError ... collateral missing, malformed, not authentic,
    │                               stale, or not for this quote's platform
    ├── PolicyViolation
    │   └── TdxPolicyViolation .... authentic quote the policy does not accept
    └── UnsupportedPlatform
        └── TdxDeviceUnavailable .. no configfs-tsm / /dev/tdx_guest here

Messages never contain secrets; quote fields are public by construction.
"""

from __future__ import annotations

from attestation.errors import EvidenceFormatError, PolicyViolation, UnsupportedPlatform, VerificationError

__all__ = [
    "CollateralError",
    "TdxDeviceUnavailable",
    "TdxFormatError",
    "TdxPolicyViolation",
    "TdxVerificationError",
    "UnknownQuoteFormat",
]


class TdxFormatError(EvidenceFormatError):
    """TDX (or SGX DCAP) bytes or JSON are malformed."""


class UnknownQuoteFormat(TdxFormatError):
    """The bytes are not a DCAP quote this code reads: another attestation key type
    or quote version (an SNP report, say)."""


class TdxVerificationError(VerificationError):
    """The quote parsed but is not authentic, not bound as expected, or its TCB is unusable."""


class CollateralError(TdxVerificationError):
    """Collateral is missing, malformed, not authentic, stale, or does not fit the quote."""


class TdxPolicyViolation(PolicyViolation):
    """An authentic quote that the appraisal policy rejects."""


class TdxDeviceUnavailable(UnsupportedPlatform):
    """Neither configfs-tsm (provider tdx_guest) nor /dev/tdx_guest is usable."""
