"""Symmetric unwrapping shared by sealed-secret envelopes and the key provider,
plus strict JSON parsing for security-relevant input."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.errors import CdhError
from coco_common.b64 import b64_decode, b64url_decode
from coco_common.strict_json import strict_loads

__all__ = ["CryptoError", "b64_std", "b64url", "strict_json", "unwrap"]


class CryptoError(CdhError):
    """Bad key, IV, tag or encoding. Messages carry no key or plaintext bytes."""


def strict_json(untrusted: bytes | str, *, limit: int = 1 << 20) -> Any:
    """:func:`coco_common.strict_json.strict_loads` with a limit (1 MiB unless given):
    oversize input, duplicate keys, NaN/Infinity and runaway nesting are a :class:`CryptoError`."""
    return strict_loads(untrusted, limit=limit, error=CryptoError, what="JSON")


def b64url(untrusted: object) -> bytes:
    """Decode base64url (padding optional), strictly."""
    if not isinstance(untrusted, str):
        raise CryptoError("expected a base64url string")
    try:
        return b64url_decode(untrusted)
    except ValueError as exc:
        raise CryptoError("bad base64url") from exc


def b64_std(untrusted: object) -> bytes:
    """Decode standard padded base64, strictly."""
    if not isinstance(untrusted, str):
        raise CryptoError("expected a base64 string")
    try:
        return b64_decode(untrusted)
    except ValueError as exc:
        raise CryptoError("bad base64") from exc


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
