"""Errors of the Attestation Agent::

    AttestationError
    └── AaError ................. root of the AA's own errors
        ├── AaConfigError ....... aa.toml (or the kernel-cmdline fallback) is malformed
        ├── InitDataBindError ... init-data could not be bound at start-up
        └── AaTokenError ........ a token could not be obtained

Platform errors raised while collecting evidence keep their own TEE package's
classes (all under :class:`attestation.errors.AttestationError`).
"""

from __future__ import annotations

from attestation.errors import AttestationError

__all__ = ["AaConfigError", "AaError", "AaTokenError", "InitDataBindError"]


class AaError(AttestationError):
    """Root of the Attestation Agent's own errors."""


class AaConfigError(AaError):
    """``aa.toml`` (or the kernel-cmdline fallback) is malformed; the message names the key."""


class InitDataBindError(AaError):
    """Initdata could not be bound to the platform at start-up (AA refuses to start)."""


class AaTokenError(AaError):
    """A token could not be obtained (unknown token type, missing config, KBS failure)."""
