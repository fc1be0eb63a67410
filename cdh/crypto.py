"""Symmetric unwrapping shared by sealed-secret envelopes and the key provider,
ES256 verification of sealed secrets, plus strict JSON parsing for
security-relevant input.

This module is the CDH's one door to ``cryptography``, and it opens it at the
first unwrap, unseal or verification: the idle daemon does not carry the
library (~7 MiB of resident memory, ~30 ms of start-up)."""

from __future__ import annotations

from typing import Any

from cdh.errors import CdhError
from coco_common.b64 import b64_decode, b64url_decode
from coco_common.strict_json import strict_loads

__all__ = [
    "CryptoError",
    "aes_gcm_open",
    "aes_gcm_seal",
    "b64_std",
    "b64url",
    "strict_json",
    "unwrap",
    "verify_es256",
]


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
        return aes_gcm_open(key, iv, data)
    if wrap_type == "A256CTR":
        if len(iv) != 16:
            raise CryptoError("A256CTR needs a 16-byte IV")
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        d = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
        return d.update(data) + d.finalize()
    raise CryptoError(f"unsupported wrap type {wrap_type!r} (A256GCM or A256CTR)")


def aes_gcm_open(key: bytes, nonce: bytes, data: bytes) -> bytes:
    """AES-GCM decryption of ``data`` (ciphertext || 16-byte tag), no associated data."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(nonce, data, None)
    except InvalidTag as exc:
        raise CryptoError("A256GCM authentication failed (wrong key or tampered data)") from exc


def aes_gcm_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """AES-GCM encryption: ciphertext || 16-byte tag, no associated data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key).encrypt(nonce, plaintext, None)


def verify_es256(x: bytes, y: bytes, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (``r || s``, 32 bytes each) over ``signing_input``
    verifies with the P-256 public key ``(x, y)``. A point that is not on
    P-256 is a :class:`CryptoError`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    try:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError as exc:
        raise CryptoError("not a point on P-256") from exc
    half = len(signature) // 2
    der = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    try:
        key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
