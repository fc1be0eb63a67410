"""trustee's TDX evidence envelope, the JSON the attester sends::

    {"cc_eventlog": <standard base64> | null, "quote": <standard base64>}

``cc_eventlog`` is the CCEL (plus the AA event log) that replays into the
RTMRs; ``quote`` the DCAP quote. Parsing is strict: no other keys, sizes
checked before decoding, and the quote must not be empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.tdx.errors import TdxFormatError
from attestation.tdx.quote import MAX_QUOTE_SIZE
from coco_common.b64 import b64_decode, b64_encode
from coco_common.strict_json import strict_loads

__all__ = ["MAX_EVIDENCE_SIZE", "TdxEvidence"]

#: the whole evidence JSON, and the decoded event log
MAX_EVIDENCE_SIZE = 8 * 1024 * 1024


def _b64(s: Any, what: str, limit: int) -> bytes:
    if not isinstance(s, str):
        raise TdxFormatError(f"TDX evidence: {what} must be a base64 string")
    if len(s) > limit * 4 // 3 + 8:
        raise TdxFormatError(f"TDX evidence: {what} too large")
    try:
        return b64_decode(s)
    except ValueError as exc:
        raise TdxFormatError(f"TDX evidence: {what} is not standard base64") from exc


@dataclass(frozen=True)
class TdxEvidence:
    quote: bytes
    #: None when the evidence has no (or an empty) ``cc_eventlog``
    cc_eventlog: bytes | None

    @classmethod
    def from_json(cls, untrusted: Any) -> TdxEvidence:
        """From the evidence as JSON text (str/bytes) or as already-parsed JSON."""
        if isinstance(untrusted, (str, bytes, bytearray)):
            untrusted = strict_loads(
                untrusted,
                limit=MAX_EVIDENCE_SIZE,
                error=TdxFormatError,
                what="TDX evidence JSON does not parse",
            )
        if not isinstance(untrusted, Mapping):
            raise TdxFormatError("TDX evidence must be a JSON object")
        if set(untrusted) - {"cc_eventlog", "quote"} or "quote" not in untrusted:
            raise TdxFormatError("TDX evidence must have 'quote' and optional 'cc_eventlog' only")
        quote = _b64(untrusted["quote"], "quote", MAX_QUOTE_SIZE)
        if not quote:
            raise TdxFormatError("TDX evidence: empty quote")
        raw_el = untrusted.get("cc_eventlog")
        return cls(quote, _b64(raw_el, "cc_eventlog", MAX_EVIDENCE_SIZE) if raw_el else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "cc_eventlog": b64_encode(self.cc_eventlog) if self.cc_eventlog else None,
            "quote": b64_encode(self.quote),
        }
