"""Symmetric unwrapping shared by sealed-secret envelopes and the key provider,
plus strict JSON parsing for security-relevant input."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.errors import CdhError
from coco_common.strict_json import strict_loads

__all__ = ["CryptoError", "b64_std", "b64url", "strict_json", "unwrap"]


class CryptoError(CdhError):
    """Bad key, IV, tag or encoding. Messages carry no key or plaintext bytes."""


def strict_json(untrusted: bytes | str, *, limit: int = 1 << 20) -> Any:
    """Parse JSON rejecting oversize input, duplicate keys, NaN/Infinity and
    runaway nesting (:func:`coco_common.strict_json.strict_loads`)."""
    if len(untrusted) > limit:
        raise CryptoError(f"JSON document larger than {limit} bytes")
    try:
        return strict_loads(untrusted)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CryptoError("malformed JSON") from exc
    except ValueError as exc:  # duplicate key, NaN/Infinity, nesting
        raise CryptoError(f"JSON: {exc}") from exc


def b64url(untrusted: str) -> bytes:
    """Decode unpadded (or padded) base64url, strictly."""
    if not isinstance(untrusted, str) or any(c not in _B64URL for c in untrusted.rstrip("=")):
        raise CryptoError("bad base64url")
    try:
        return base64.urlsafe_b64decode(untrusted + "=" * (-len(untrusted) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("bad base64url") from exc


def b64_std(untrusted: object) -> bytes:
    if not isinstance(untrusted, str):
        raise CryptoError("expected a base64 string")
    try:
        return base64.b64decode(untrusted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("bad base64") from exc


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def unwrap(key: bytes, iv: bytes, data: bytes, wrap_type: str) -> bytes:
    """Decrypt ``data`` with a 32-byte key. ``A256GCM``: 12-byte IV, data is
    ciphertext||16-byte tag. ``A256CTR``: 16-byte IV."""
    if len(key) != 32:
        raise CryptoError(f"{wrap_type} needs a 32-byte key, got {len(key)} bytes")
    if wrap_type == "A256GCM":
        if len(iv) != 12:
            raise CryptoError("A256GCM needs a 12-byte IV")
        try:
            return AESGCM(key).decrypt(iv, data, None)
        except InvalidTag as exc:
            raise CryptoError("A256GCM authentication failed (wrong key or tampered data)") from exc
    if wrap_type == "A256CTR":
        if len(iv) != 16:
            raise CryptoError("A256CTR needs a 16-byte IV")
        d = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
        return d.update(data) + d.finalize()
    raise CryptoError(f"unsupported wrap type {wrap_type!r} (A256GCM or A256CTR)")
