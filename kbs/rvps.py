"""Built-in reference value provider service (reference §6.1, §7.3):
``sample`` extractor, 12-month expiry, stored in namespace ``reference_value``
as trustee's RVPS stores a ``ReferenceValue``:
``{"version":"0.1.0","name","expiration":"YYYY-mm-ddTHH:MM:SSZ","value"}``."""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime
from typing import Any

from coco_common.strict_json import strict_loads

from .errors import RvpsError
from .storage import NS_REFERENCE_VALUE, KvStore

__all__ = ["ReferenceValues", "decode_reference_value", "encode_reference_value", "parse_message"]

RV_LIFETIME_S = 365 * 24 * 3600
MAX_RV_MESSAGE = 1024 * 1024


def parse_message(untrusted_body: bytes) -> dict[str, Any]:
    """Parse ``{"version":"0.1.0","type":"sample","payload":<std b64 of {name: value}>}``."""
    if len(untrusted_body) > MAX_RV_MESSAGE:
        raise RvpsError("reference value message too large")
    try:
        msg = strict_loads(untrusted_body)
    except ValueError as exc:
        raise RvpsError("reference value message is not JSON") from exc
    # trustee: unknown members ignored, version defaults to 0.1.0
    if not isinstance(msg, dict) or not {"type", "payload"} <= set(msg):
        raise RvpsError("reference value message needs type and payload")
    if msg.get("version", "0.1.0") != "0.1.0":
        raise RvpsError("reference value message version must be 0.1.0")
    if msg["type"] != "sample":
        raise RvpsError(f"reference value extractor {msg['type']!r} is not supported (sample only)")
    if not isinstance(msg["payload"], str):
        raise RvpsError("payload must be a string")
    try:
        values = strict_loads(base64.b64decode(msg["payload"], validate=True))
    except (binascii.Error, ValueError) as exc:
        raise RvpsError("payload is not base64 of a JSON object") from exc
    if not isinstance(values, dict):
        raise RvpsError("payload must be a JSON object of name -> value")
    return values


def encode_reference_value(name: str, value: Any, expires_at: float) -> bytes:
    """trustee's stored ``ReferenceValue`` (expiration truncated to whole seconds, UTC)."""
    exp = datetime.fromtimestamp(int(expires_at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"version": "0.1.0", "name": name, "expiration": exp, "value": value}).encode()


def decode_reference_value(raw: bytes) -> tuple[float, Any]:
    """(expiry as a POSIX time, value) of a stored ``ReferenceValue``; ValueError if malformed."""
    rec = strict_loads(raw)
    if not isinstance(rec, dict) or "value" not in rec or not isinstance(rec.get("expiration"), str):
        raise ValueError("not a reference value record")
    exp = datetime.strptime(rec["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return exp.timestamp(), rec["value"]


class ReferenceValues:
    def __init__(self, store: KvStore, *, hide_expired: bool = True) -> None:
        self._store = store
        #: false: as trustee's RVPS, an expired value is still returned
        self._hide_expired = hide_expired

    async def register(self, untrusted_body: bytes, *, now: float | None = None) -> list[str]:
        values = parse_message(untrusted_body)
        t = time.time() if now is None else now
        for name, value in values.items():
            if not name or len(name) > 256:
                raise RvpsError("invalid reference value name")
            await self._store.set(
                NS_REFERENCE_VALUE, name, encode_reference_value(name, value, t + RV_LIFETIME_S)
            )
        return sorted(values)

    async def get(self, name: str, *, now: float | None = None) -> Any:
        raw = await self._store.get(NS_REFERENCE_VALUE, name)
        if raw is None:
            return None
        try:
            expires, value = decode_reference_value(raw)
        except ValueError as exc:
            raise RvpsError("stored reference value is malformed") from exc
        if self._hide_expired and expires <= (time.time() if now is None else now):
            return None
        return value

    async def all(self, *, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in await self._store.keys(NS_REFERENCE_VALUE):
            v = await self.get(name, now=now)
            if v is not None:
                out[name] = v
        return out
