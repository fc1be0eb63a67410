"""Errors raised by :mod:`attestation.snp`.

One root, :class:`SnpError`; each class also subclasses the shared
:mod:`attestation.errors` category it belongs to (in brackets), so callers
that only know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── SnpError ............................ root of this package
        ├── SnpFormatError .................. (EvidenceFormatError) bytes/JSON are not a
        │   │                                 well-formed report or evidence
        │   ├── ReportSizeError ............. truncated or oversized report
        │   ├── UnknownReportVersion ........ a version this code does not know how to read
        │   └── CertificateFormatError ...... a VCEK/VLEK/root that does not parse
        ├── SnpVerificationError ............ (VerificationError)
        │   ├── ReportSignatureInvalid ...... ECDSA signature over the report fails
        │   ├── CertChainInvalid ............ ARK → ASK/ASVK → VCEK/VLEK does not verify
        │   ├── WrongProductRoot ............ key chains to another product's root
        │   ├── CertificateExpired .......... a certificate (or the CRL) is outside its
        │   │                                 validity at ``now``
        │   ├── CertificateRevoked .......... the ASK/ASVK or VCEK/VLEK is on AMD's CRL
        │   ├── TcbMismatch ................. VCEK/VLEK TCB extensions differ from REPORTED_TCB
        │   ├── ChipIdMismatch .............. VCEK hwID differs from CHIP_ID
        │   ├── SigningKeyMismatch .......... report says VLEK, cert is a VCEK (or similar)
        │   ├── EndorsementKeyUnavailable ... no VCEK/VLEK given, cached, or fetchable
        │   ├── RevocationListUnavailable ... CRL checking asked for, but no usable CRL
        │   ├── ReportDataMismatch .......... REPORT_DATA is not the expected binding
        │   └── HostDataMismatch ............ HOST_DATA is not the expected init-data digest
        ├── SnpPolicyViolation .............. (PolicyViolation) authentic report the policy
        │                                     does not accept
        └── SnpDeviceUnavailable ............ (UnsupportedPlatform) no configfs-tsm/sev-guest
                                              here, or the device failed

Messages never contain secrets; report fields are public by construction.
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
    "CertChainInvalid",
    "CertificateExpired",
    "CertificateFormatError",
    "CertificateRevoked",
    "ChipIdMismatch",
    "EndorsementKeyUnavailable",
    "HostDataMismatch",
    "ReportDataMismatch",
    "ReportSignatureInvalid",
    "ReportSizeError",
    "RevocationListUnavailable",
    "SigningKeyMismatch",
    "SnpDeviceUnavailable",
    "SnpError",
    "SnpFormatError",
    "SnpPolicyViolation",
    "SnpVerificationError",
    "TcbMismatch",
    "UnknownReportVersion",
    "WrongProductRoot",
]


class SnpError(AttestationError):
    """Root of every error raised by :mod:`attestation.snp`."""


class SnpFormatError(SnpError, EvidenceFormatError):
    """SNP report bytes or evidence JSON are malformed."""


class ReportSizeError(SnpFormatError):
    """The report is not exactly 1184 bytes."""


class UnknownReportVersion(SnpFormatError):
    """The report's VERSION field is one this code cannot read."""


class CertificateFormatError(SnpFormatError):
    """A certificate does not parse or lacks a required AMD extension."""


class SnpVerificationError(SnpError, VerificationError):
    """The report parsed but is not authentic or not bound as expected."""


class ReportSignatureInvalid(SnpVerificationError):
    """The ECDSA P-384 signature over report bytes 0x000..0x29F does not verify."""


class CertChainInvalid(SnpVerificationError):
    """The VCEK/VLEK does not chain to the pinned AMD root."""


class WrongProductRoot(SnpVerificationError):
    """The key chains to another product's root than the report's product."""


class CertificateExpired(SnpVerificationError):
    """A certificate in the chain is not valid at the given time."""


class CertificateRevoked(SnpVerificationError):
    """A certificate in the chain is listed on the product's CRL."""


class TcbMismatch(SnpVerificationError):
    """The VCEK/VLEK TCB extensions differ from the report's REPORTED_TCB."""


class ChipIdMismatch(SnpVerificationError):
    """The VCEK hwID extension differs from the report's CHIP_ID."""


class SigningKeyMismatch(SnpVerificationError):
    """The report's SIGNING_KEY field does not match the key supplied (or is 'none')."""


class EndorsementKeyUnavailable(SnpVerificationError):
    """No VCEK/VLEK was supplied, cached, or (when allowed) fetchable from AMD KDS."""


class RevocationListUnavailable(SnpVerificationError):
    """CRL checking was requested but no current CRL could be cached or fetched."""


class ReportDataMismatch(SnpVerificationError):
    """REPORT_DATA is not the expected value zero-padded to 64 bytes."""


class HostDataMismatch(SnpVerificationError):
    """HOST_DATA is not the expected init-data digest (resized to 32 bytes)."""


class SnpPolicyViolation(SnpError, PolicyViolation):
    """An authentic report that the validation policy rejects."""


class SnpDeviceUnavailable(SnpError, UnsupportedPlatform):
    """Neither configfs-tsm (provider sev_guest) nor /dev/sev-guest is usable."""
