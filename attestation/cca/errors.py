"""Errors raised by :mod:`attestation.cca`.

One root, :class:`CcaError`; a class that belongs to one of the shared
:mod:`attestation.errors` categories subclasses it too, so callers that only
know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── CcaError ......................... root of this package
        ├── CcaFormatError ............... (EvidenceFormatError)
        ├── CcaVerificationError ......... (VerificationError)
        └── CcaDeviceUnavailable ......... (UnsupportedPlatform)
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, UnsupportedPlatform, VerificationError

__all__ = [
    "CcaDeviceUnavailable",
    "CcaError",
    "CcaFormatError",
    "CcaVerificationError",
]


class CcaError(AttestationError):
    """Root of every error raised by :mod:`attestation.cca`."""


class CcaFormatError(CcaError, EvidenceFormatError):
    """The CCA evidence or token is not well-formed JSON/CBOR/COSE."""


class CcaVerificationError(CcaError, VerificationError):
    """A CCA token signature or binding does not verify."""


class CcaDeviceUnavailable(CcaError, UnsupportedPlatform):
    """No configfs-tsm CCA provider here, or it failed."""
