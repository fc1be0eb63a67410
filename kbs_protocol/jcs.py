"""RFC 8785 JSON canonicalization and the runtime-data hash of reference §3."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

__all__ = ["HASH_ALGORITHMS", "canonicalize", "hash_bytes", "hash_canonical"]

#: names accepted in ``selected-hash-algorithm`` (lowercase, as kbs-types spells them)
HASH_ALGORITHMS = ("sha256", "sha384", "sha512", "sm3")
#: the integers JCS writes as they are (IEEE 754 doubles hold them exactly)
_MAX_SAFE_INT = 2**53 - 1


def _plain(value: Any) -> bool:
    """True when ``json.dumps(sort_keys=True, ensure_ascii=False)`` writes ``value`` exactly
    as RFC 8785 does: objects with ASCII keys (code-point order is then UTF-16 order),
    strings, safe integers, booleans, null and arrays of those. Floats, non-ASCII keys and
    anything else go to the full implementation."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if t is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if t is list:
        return all(_plain(v) for v in value)
    return False


def canonicalize(value: Any) -> bytes:
    """JCS (RFC 8785) bytes of a JSON value. The common case (ASCII member names, no floats)
    is written by the C JSON encoder, whose output is byte for byte RFC 8785's there: sorted
    members, no whitespace, UTF-8, and the same escapes (``\\"`` ``\\\\`` ``\\b`` ``\\f``
    ``\\n`` ``\\r`` ``\\t``, other controls as lowercase ``\\u00xx``)."""
    try:
        if _plain(value):
            return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
                "utf-8"
            )
    except (RecursionError, UnicodeEncodeError):  # deep nesting, lone surrogates: rfc8785 decides
        pass
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
