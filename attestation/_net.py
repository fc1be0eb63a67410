"""Bounded reads of HTTP answers from endorsement services (AMD KDS, Intel PCS/PCCS)."""

from __future__ import annotations

import httpx

__all__ = ["read_bounded"]


def read_bounded(resp: httpx.Response, limit: int) -> bytes | None:
    """The body of a *streamed* response (``client.stream(...)``), or ``None`` as
    soon as it grows past ``limit`` bytes; the rest is never read."""
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
