"""The ``cca`` evidence envelope: ``{"token": [CBOR bytes as a JSON byte array]}``
(a base64 string is tolerated)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attestation.cca.errors import CcaFormatError
from attestation.cca.token import MAX_TOKEN_SIZE
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = ["evidence_token"]


def evidence_token(untrusted: Any) -> bytes:
    """The token bytes of untrusted ``cca`` evidence (JSON text or a parsed value)."""
    if isinstance(untrusted, (str, bytes, bytearray)):
        untrusted = strict_loads(
            untrusted, limit=8 * MAX_TOKEN_SIZE, error=CcaFormatError, what="CCA evidence"
        )
    if not isinstance(untrusted, Mapping) or set(untrusted) != {"token"}:
        raise CcaFormatError("CCA evidence must be {'token': [bytes]}")
    tok = untrusted["token"]
    if isinstance(tok, str):  # tolerated: base64
        try:
            return b64_decode(tok)
        except ValueError as exc:
            raise CcaFormatError("CCA token string is not base64") from exc
    if not isinstance(tok, list) or len(tok) > MAX_TOKEN_SIZE:
        raise CcaFormatError("CCA token must be a JSON byte array")
    if not all(type(b) is int and 0 <= b <= 255 for b in tok):
        raise CcaFormatError("CCA token holds a value that is not a byte")
    return bytes(tok)
