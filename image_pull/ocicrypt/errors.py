"""Errors of :mod:`image_pull.ocicrypt` (all are :class:`~image_pull.errors.DecryptionError`).

DecryptionError
├── KeyUnavailable     no configured key (or key provider) unwraps the layer key
├── InvalidEncryptedLayer  malformed annotations, options or JWE
└── IntegrityError     HMAC or plaintext digest mismatch (tampered ciphertext)
"""

from __future__ import annotations

from image_pull.errors import DecryptionError

__all__ = ["IntegrityError", "InvalidEncryptedLayer", "KeyUnavailable"]


class KeyUnavailable(DecryptionError):
    """None of the configured private keys / key providers can unwrap the layer key."""


class InvalidEncryptedLayer(DecryptionError):
    """The layer's encryption annotations, options or key wrapping are malformed or unsupported."""


class IntegrityError(DecryptionError):
    """The ciphertext failed its HMAC, or the plaintext its digest."""
