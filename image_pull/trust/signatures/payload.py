"""Signature payloads: simple signing ("atomic container signature") and cosign.

Both share one JSON shape (``containers-signature(5)``, cosign's
``SimpleContainerImage``)::

    {"critical": {"type": T, "image": {"docker-manifest-digest": D},
                  "identity": {"docker-reference": R}},
     "optional": {...} | null}

Parsing is strict: duplicate keys anywhere, any unknown member under
``critical``, or a wrong type reject the payload. ``optional`` may hold anything
(``creator`` must be a string and ``timestamp`` an integer when present).
The payload is parsed only *after* its signature verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coco_common.strict_json import strict_loads
from image_pull.trust.errors import SignatureRejected

__all__ = ["COSIGN_TYPE", "MAX_PAYLOAD_BYTES", "SIMPLE_SIGNING_TYPE", "SignaturePayload", "parse_payload"]

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 4 << 20


@dataclass(frozen=True)
class SignaturePayload:
    type: str
    manifest_digest: str
    docker_reference: str
    creator: str | None = None
    timestamp: int | None = None


def _loads(untrusted: bytes) -> Any:
    try:
        return strict_loads(untrusted)
    except ValueError as exc:
        raise SignatureRejected(f"signature payload is not valid strict JSON: {str(exc)[:80]}") from exc


def _exact(v: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != keys:
        raise SignatureRejected(f"signature payload: {what} must have exactly {sorted(keys)}")
    return v


def parse_payload(untrusted_payload: bytes, *, expected_type: str) -> SignaturePayload:
    """Parse a (signature-verified) payload; the type must be ``expected_type``."""
    if len(untrusted_payload) > MAX_PAYLOAD_BYTES:
        raise SignatureRejected("signature payload too large")
    doc = _loads(untrusted_payload)
    if not isinstance(doc, dict) or set(doc) - {"critical", "optional"} or "critical" not in doc:
        raise SignatureRejected("signature payload must have critical (and optional) members only")
    if expected_type == SIMPLE_SIGNING_TYPE and "optional" not in doc:
        raise SignatureRejected("simple-signing payload lacks its optional member")
    crit = _exact(doc["critical"], {"type", "image", "identity"}, "critical")
    if crit["type"] != expected_type:
        raise SignatureRejected(f"signature payload type is not {expected_type!r}")
    image = _exact(crit["image"], {"docker-manifest-digest"}, "critical.image")
    ident = _exact(crit["identity"], {"docker-reference"}, "critical.identity")
    digest, ref = image["docker-manifest-digest"], ident["docker-reference"]
    if not isinstance(digest, str) or not isinstance(ref, str):
        raise SignatureRejected("signature payload digest and reference must be strings")
    creator: str | None = None
    timestamp: int | None = None
    opt = doc.get("optional")
    if opt is not None:
        if not isinstance(opt, dict):
            raise SignatureRejected("signature payload optional must be an object")
        if "creator" in opt:
            if not isinstance(opt["creator"], str):
                raise SignatureRejected("signature payload creator must be a string")
            creator = opt["creator"]
        if "timestamp" in opt:
            ts = opt["timestamp"]
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise SignatureRejected("signature payload timestamp must be an integer")
            timestamp = ts
    return SignaturePayload(expected_type, digest, ref, creator, timestamp)
