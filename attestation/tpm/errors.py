"""Errors raised by :mod:`attestation.tpm`.

One root, :class:`TpmError`; a class that belongs to one of the shared
:mod:`attestation.errors` categories subclasses it too, so callers that only
know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── TpmError ......................... root of this package
        ├── TpmFormatError ............... (EvidenceFormatError)
        ├── TpmVerificationError ......... (VerificationError)
        │   └── QuoteSignatureInvalid .... The quote was not signed by the attestation key.
        ├── TpmUnavailable ............... (UnsupportedPlatform)
        └── TpmCommandError .............. a TPM command failed (``code``: the TPM's response code)
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, UnsupportedPlatform, VerificationError

__all__ = [
    "QuoteSignatureInvalid",
    "TpmCommandError",
    "TpmError",
    "TpmFormatError",
    "TpmUnavailable",
    "TpmVerificationError",
]


class TpmError(AttestationError):
    """Root of every error raised by :mod:`attestation.tpm`."""


class TpmFormatError(TpmError, EvidenceFormatError):
    """evidence JSON or a TPM structure is malformed (truncated, trailing bytes, unknown tag)."""


class TpmVerificationError(TpmError, VerificationError):
    """A TPM quote parsed but is not authentic or not bound as expected."""


class QuoteSignatureInvalid(TpmVerificationError):
    """The quote was not signed by the attestation key."""


class TpmUnavailable(TpmError, UnsupportedPlatform):
    """No TPM at the configured device/socket."""


class TpmCommandError(TpmError):
    """The TPM answered a command with an error code, or an unusable response.

    ``code`` is the TPM response code when the TPM gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
