"""Base64, strictly: one decoder per alphabet for every package.

Decoders refuse characters outside their alphabet, impossible lengths and
non-canonical trailing bits (as the Rust ``base64`` crate upstream uses does by
default), raising :class:`ValueError`; callers translate it into their own
error. Encoders produce the canonical form: base64url without padding (JOSE,
RFC 7515 §2) and standard base64 with padding."""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64_decode", "b64_encode", "b64url_decode", "b64url_encode"]

_URL = re.compile(rb"[A-Za-z0-9_-]*")
_STD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _ascii(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, not {type(text).__name__}")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("base64 text is not ASCII") from exc


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes, *, allow_padding: bool = True) -> bytes:
    """Decode base64url. Padding is optional unless ``allow_padding=False`` (the
    JOSE members on the KBS wire), where any ``=`` is an error."""
    raw = _ascii(text)
    body = raw.rstrip(b"=") if allow_padding else raw
    if allow_padding and len(raw) - len(body) > 2:
        raise ValueError("too much base64url padding")
    if _URL.fullmatch(body) is None:
        raise ValueError("invalid base64url character")
    if len(body) % 4 == 1:
        raise ValueError("impossible base64url length")
    if allow_padding and len(raw) != len(body) and len(raw) % 4:
        raise ValueError("wrong base64url padding")
    out = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
    if base64.urlsafe_b64encode(out).rstrip(b"=") != body:
        raise ValueError("non-canonical base64url (trailing bits set)")
    return out


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str | bytes) -> bytes:
    """Decode standard padded base64 strictly."""
    raw = _ascii(text)
    if _STD.fullmatch(raw) is None or len(raw) % 4:
        raise ValueError("invalid standard base64 text")
    try:
        out = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid standard base64 text") from exc
    if base64.b64encode(out) != raw:
        raise ValueError("non-canonical base64 (trailing bits set)")
    return out
