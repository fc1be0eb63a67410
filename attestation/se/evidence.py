"""The ``se`` evidence envelope: the guest's ``SeAttestationResponse`` JSON
(every field standard base64)::

    {"measurement", "additional_data", "user_data", "cuid",
     "encr_measurement_key", "encr_request_nonce", "image_hdr_tags"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.se.arcb import MEASUREMENT_SIZE, TAGS_SIZE
from attestation.se.errors import SeFormatError
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = ["SeResponse", "parse_response"]

MAX_EVIDENCE_JSON = 64 * 1024
_RESPONSE_FIELDS = {
    "measurement",
    "additional_data",
    "user_data",
    "cuid",
    "encr_measurement_key",
    "encr_request_nonce",
    "image_hdr_tags",
}


@dataclass(frozen=True)
class SeResponse:
    """A decoded, size-checked ``SeAttestationResponse`` (not yet verified)."""

    measurement: bytes
    additional_data: bytes
    user_data: bytes
    cuid: bytes
    encr_measurement_key: bytes
    encr_request_nonce: bytes
    image_hdr_tags: bytes


def _b64(doc: Mapping[str, Any], key: str, limit: int) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str) or len(v) > limit * 4 // 3 + 4:
        raise SeFormatError(f"SE response: {key} must be a base64 string")
    try:
        return b64_decode(v)
    except ValueError as exc:
        raise SeFormatError(f"SE response: {key} is not standard base64") from exc


def parse_response(untrusted: Any) -> SeResponse:
    """Untrusted ``se`` evidence (JSON text or a parsed value) as an :class:`SeResponse`."""
    doc = untrusted
    if isinstance(doc, (str, bytes, bytearray)):
        doc = strict_loads(doc, limit=MAX_EVIDENCE_JSON, error=SeFormatError, what="SE evidence")
    if not isinstance(doc, Mapping) or set(doc) != _RESPONSE_FIELDS:
        raise SeFormatError(f"SE evidence must have exactly {sorted(_RESPONSE_FIELDS)}")
    r = SeResponse(
        measurement=_b64(doc, "measurement", 64),
        additional_data=_b64(doc, "additional_data", 4096),
        user_data=_b64(doc, "user_data", 256),
        cuid=_b64(doc, "cuid", 16),
        encr_measurement_key=_b64(doc, "encr_measurement_key", 1024),
        encr_request_nonce=_b64(doc, "encr_request_nonce", 1024),
        image_hdr_tags=_b64(doc, "image_hdr_tags", TAGS_SIZE),
    )
    if len(r.cuid) != 16 or len(r.image_hdr_tags) != TAGS_SIZE or len(r.measurement) != MEASUREMENT_SIZE:
        raise SeFormatError("SE response fields have the wrong sizes")
    return r
