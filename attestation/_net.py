"""Bounded reads of HTTP answers from endorsement services (AMD KDS, Intel PCS/PCCS)."""

from __future__ import annotations

import httpx

from coco_common.http_body import (
    DECODABLE,
    BodyEncodingError,
    BodyTooLarge,
    BodyTransportError,
    read_body_sync,
)

__all__ = ["read_bounded"]


def read_bounded(resp: httpx.Response, limit: int) -> bytes | None:
    """The body of a *streamed* response (``client.stream(...)``), or ``None`` as
    soon as it grows past ``limit`` bytes *after decoding* (gzip/deflate are
    decoded with that bound, any other coding is refused); the rest is never
    read. Refused or corrupt codings and connections lost mid-body raise the
    ``httpx.HTTPError`` subclasses callers already handle."""
    try:
        return read_body_sync(resp, limit, decode=DECODABLE, what="endorsement service answer")
    except BodyTooLarge:
        return None
    except BodyEncodingError as exc:
        raise httpx.DecodingError(str(exc)) from exc
    except BodyTransportError as exc:
        raise httpx.ReadError(str(exc)) from exc
