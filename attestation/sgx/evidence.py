"""The ``sgx`` evidence envelope (trustee's): ``{"quote": <standard base64 of an SGX DCAP quote>}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attestation.sgx.errors import SgxFormatError
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = ["MAX_QUOTE", "evidence_quote"]

MAX_QUOTE = 64 * 1024


def evidence_quote(untrusted: Any) -> bytes:
    """The quote bytes of untrusted ``sgx`` evidence (JSON text or a parsed value)."""
    if isinstance(untrusted, (str, bytes, bytearray)):
        untrusted = strict_loads(untrusted, limit=2 * MAX_QUOTE, error=SgxFormatError, what="SGX evidence")
    if not isinstance(untrusted, Mapping) or set(untrusted) != {"quote"}:
        raise SgxFormatError("SGX evidence must be {'quote': <base64>}")
    raw = untrusted["quote"]
    if not isinstance(raw, str) or not raw or len(raw) > MAX_QUOTE * 4 // 3 + 4:
        raise SgxFormatError("SGX evidence: quote must be a non-empty base64 string")
    try:
        quote = b64_decode(raw)
    except ValueError as exc:
        raise SgxFormatError("SGX evidence: quote is not standard base64") from exc
    return quote
