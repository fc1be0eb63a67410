"""The exception root of :mod:`attestation`."""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "ConfigFileError",
    "EvidenceFormatError",
    "PolicyViolation",
    "UnsupportedPlatform",
    "VerificationError",
]


class AttestationError(Exception):
    """Root of every error raised by :mod:`attestation`."""


class EvidenceFormatError(AttestationError):
    """Evidence bytes or JSON could not be parsed (truncated, unknown version, ...)."""


class VerificationError(AttestationError):
    """Evidence parsed but is not authentic (signature, chain, validity, binding)."""


class PolicyViolation(AttestationError):
    """Authentic evidence that the given policy does not accept."""


class UnsupportedPlatform(AttestationError):
    """The platform or device needed for an operation is not present here."""


class ConfigFileError(AttestationError):
    """A file a verifier's configuration names cannot be used: missing,
    unreadable, not a regular file or larger than its kind may be. The message
    names the file, never its content."""
