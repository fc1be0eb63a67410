"""Errors raised by :mod:`attestation.se`.

One root, :class:`SeError`; a class that belongs to one of the shared
:mod:`attestation.errors` categories subclasses it too, so callers that only
know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── SeError .......................... root of this package
        ├── SeFormatError ................ (EvidenceFormatError)
        ├── SeVerificationError .......... (VerificationError)
        ├── SeUnavailable ................ (UnsupportedPlatform)
        └── SeDeviceError ................ The Ultravisor attestation call failed or its request is out of
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, UnsupportedPlatform, VerificationError

__all__ = [
    "SeDeviceError",
    "SeError",
    "SeFormatError",
    "SeUnavailable",
    "SeVerificationError",
]


class SeError(AttestationError):
    """Root of every error raised by :mod:`attestation.se`."""


class SeFormatError(SeError, EvidenceFormatError):
    """An SE attestation request, response or SE header does not parse."""


class SeVerificationError(SeError, VerificationError):
    """An SE attestation response does not verify."""


class SeUnavailable(SeError, UnsupportedPlatform):
    """No Ultravisor device here (or an operation SE has not)."""


class SeDeviceError(SeError):
    """The Ultravisor attestation call failed or its request is out of bounds."""
