"""Errors of the Attestation Agent (rooted in :class:`attestation.errors.AttestationError`)."""

from __future__ import annotations

from attestation.errors import AttestationError

__all__ = ["AaError", "ConfigError", "InitDataBindError", "TokenError"]


class AaError(AttestationError):
    """Root of the Attestation Agent's own errors."""


class ConfigError(AaError):
    """``aa.toml`` (or the kernel-cmdline fallback) is malformed; the message names the key."""


class InitDataBindError(AaError):
    """Initdata could not be bound to the platform at start-up (AA refuses to start)."""


class TokenError(AaError):
    """A token could not be obtained (unknown token type, missing config, KBS failure)."""
