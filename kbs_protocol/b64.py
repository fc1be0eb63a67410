"""Base64 flavours used on the KBS wire (see reference §14.12)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["b64std", "b64url", "unb64std", "unb64url"]


def b64url(data: bytes) -> str:
    """base64url without padding (JWK / JWE / JWS members, policies)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url without padding; padding and non-alphabet characters are errors."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("expected unpadded base64url text")
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("non-ASCII base64url text") from exc
    if len(raw) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64url text") from exc


def b64std(data: bytes) -> str:
    """Standard base64 with padding (nonce, sample report_data, kbs-client output)."""
    return base64.b64encode(data).decode("ascii")


def unb64std(text: str) -> bytes:
    """Decode standard padded base64 strictly."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid standard base64 text") from exc
