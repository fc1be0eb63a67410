"""Errors raised by :mod:`attestation.azure`.

One root, :class:`AzureError`; each class also subclasses the shared
:mod:`attestation.errors` category it belongs to, so callers that only know
the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── AzureError ....................... root of this package
        ├── AzureFormatError ............. (EvidenceFormatError) evidence JSON does not parse
        │   └── HclFormatError ........... the HCL report (or its runtime data) is malformed
        ├── AzureVerificationError ....... (VerificationError) not authentic
        │   └── AzureBindingError ........ HCL report, vTPM quote and hardware report
        │                                  are not bound together
        └── ImdsError .................... the Azure IMDS (or its THIM endpoint) failed

The vTPM quote checks raise :mod:`attestation.tpm.errors` classes, the SNP
report checks :mod:`attestation.snp.errors` and the TD quote checks
:mod:`attestation.tdx`'s: they are those TEEs' checks, reused here.
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError

__all__ = [
    "AzureBindingError",
    "AzureError",
    "AzureFormatError",
    "AzureVerificationError",
    "HclFormatError",
    "ImdsError",
]


class AzureError(AttestationError):
    """Root of every error raised by :mod:`attestation.azure`."""


class AzureFormatError(AzureError, EvidenceFormatError):
    """Azure vTPM evidence JSON (or a ``coco-verify`` argument) does not parse."""


class HclFormatError(AzureFormatError):
    """The HCL report or its runtime data is malformed."""


class AzureVerificationError(AzureError, VerificationError):
    """Azure vTPM evidence parsed but is not authentic."""


class AzureBindingError(AzureVerificationError):
    """The HCL report, the vTPM quote and the hardware report are not bound together."""


class ImdsError(AzureError):
    """The Azure Instance Metadata Service (IMDS/THIM) request failed or answered garbage."""
