"""Errors raised by :mod:`attestation.sgx`.

One root, :class:`SgxError`; a class that belongs to one of the shared
:mod:`attestation.errors` categories subclasses it too, so callers that only
know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── SgxError ......................... root of this package
        ├── SgxFormatError ............... (EvidenceFormatError)
        ├── SgxVerificationError ......... (VerificationError)
        └── SgxUnavailable ............... (UnsupportedPlatform)
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, UnsupportedPlatform, VerificationError

__all__ = [
    "SgxError",
    "SgxFormatError",
    "SgxUnavailable",
    "SgxVerificationError",
]


class SgxError(AttestationError):
    """Root of every error raised by :mod:`attestation.sgx`."""


class SgxFormatError(SgxError, EvidenceFormatError):
    """SGX evidence does not parse (the quote's own checks are :mod:`attestation.tdx`'s)."""


class SgxVerificationError(SgxError, VerificationError):
    """An authentic quote that is not an SGX quote or is not bound as expected."""


class SgxUnavailable(SgxError, UnsupportedPlatform):
    """No Gramine DCAP interface here (or an operation SGX has not)."""
