"""Built-in reference value provider service (reference §6.1, §7.3):
``sample`` extractor, 12-month expiry, stored in namespace ``reference_value``."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from coco_common.strict_json import strict_loads

from .errors import RvpsError
from .storage import NS_REFERENCE_VALUE, KvStore

__all__ = ["ReferenceValues", "parse_message"]

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
    if not isinstance(msg, dict) or set(msg) != {"version", "type", "payload"}:
        raise RvpsError("reference value message needs exactly version, type and payload")
    if msg["version"] != "0.1.0":
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


class ReferenceValues:
    def __init__(self, store: KvStore) -> None:
        self._store = store

    async def register(self, untrusted_body: bytes, *, now: float | None = None) -> list[str]:
        values = parse_message(untrusted_body)
        t = time.time() if now is None else now
        for name, value in values.items():
            if not name or len(name) > 256:
                raise RvpsError("invalid reference value name")
            rec = json.dumps({"value": value, "expires": t + RV_LIFETIME_S}).encode()
            await self._store.set(NS_REFERENCE_VALUE, name, rec)
        return sorted(values)

    async def get(self, name: str, *, now: float | None = None) -> Any:
        raw = await self._store.get(NS_REFERENCE_VALUE, name)
        if raw is None:
            return None
        rec = json.loads(raw)
        if rec.get("expires", 0) <= (time.time() if now is None else now):
            return None
        return rec.get("value")

    async def all(self, *, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in await self._store.keys(NS_REFERENCE_VALUE):
            v = await self.get(name, now=now)
            if v is not None:
                out[name] = v
        return out
