"""Strict JSON for security-relevant input: the project's one implementation
lives in :mod:`attestation._json`; re-exported here for the KBS protocol code."""

from __future__ import annotations

from attestation._json import strict_loads

__all__ = ["strict_loads"]
