"""RFC 8785 JSON canonicalization and the runtime-data hash of reference §3."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

__all__ = ["HASH_ALGORITHMS", "canonicalize", "hash_bytes", "hash_canonical"]

#: names accepted in ``selected-hash-algorithm`` (lowercase, as kbs-types spells them)
HASH_ALGORITHMS = ("sha256", "sha384", "sha512", "sm3")


def canonicalize(value: Any) -> bytes:
    """JCS (RFC 8785) bytes of a JSON value."""
    return bytes(rfc8785.dumps(value))


def hash_bytes(algorithm: str, data: bytes) -> bytes:
    name = algorithm.lower()
    if name not in HASH_ALGORITHMS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r}")
    try:
        h = hashlib.new(name)
    except ValueError as exc:  # sm3 needs OpenSSL support
        raise ValueError(f"hash algorithm {name} is not available here") from exc
    h.update(data)
    return h.digest()


def hash_canonical(algorithm: str, value: Any) -> bytes:
    """``H(JCS(value))``."""
    return hash_bytes(algorithm, canonicalize(value))
