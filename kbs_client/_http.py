"""The one HTTP seam of :mod:`kbs_client`: an injected ``httpx.AsyncClient``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from coco_common.http_body import (
    ACCEPT_DECODABLE,
    DECODABLE,
    BodyEncodingError,
    BodyTooLarge,
    BodyTransportError,
    read_body,
)
from coco_common.strict_json import strict_loads

from .errors import (
    ERROR_TYPE_PREFIX,
    AdminDenied,
    AttestationRejected,
    KbsHttpError,
    PolicyDenied,
    ProtocolError,
    ResourceNotFound,
    TransportError,
    Unauthorized,
    VersionMismatch,
)

__all__ = ["SESSION_COOKIE", "Reply", "kbs_error", "request"]

SESSION_COOKIE = "kbs-session-id"
#: largest KBS response body read (resources are bounded by the KBS's 2 MiB default, JWE adds ~35%)
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

Context = Literal["auth", "attest", "resource", "admin"]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: httpx.Headers
    session_id: str | None

    def json(self) -> Any:
        try:
            return strict_loads(self.body)
        except ValueError as exc:
            raise ProtocolError("KBS answer is not JSON") from exc


def _session_from(resp: httpx.Response) -> str | None:
    for value in resp.headers.get_list("set-cookie"):
        first = value.split(";", 1)[0].strip()
        name, _, val = first.partition("=")
        if name.strip() == SESSION_COOKIE and val:
            return val.strip()
    return None


def _forget_session_cookie(http: httpx.AsyncClient) -> None:
    # httpx stores Set-Cookie in the client's jar; sessions are sent explicitly instead.
    for c in list(http.cookies.jar):
        if c.name == SESSION_COOKIE:
            http.cookies.jar.clear(c.domain, c.path, c.name)


async def request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    session_id: str | None = None,
    timeout: float = 60.0,
) -> Reply:
    hdrs = {"Accept-Encoding": ACCEPT_DECODABLE, **(headers or {})}
    if session_id is not None:
        hdrs["Cookie"] = f"{SESSION_COOKIE}={session_id}"
    if json_body is not None:
        content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        async with http.stream(method, url, content=content, headers=hdrs, timeout=timeout) as resp:
            body = await read_body(resp, MAX_RESPONSE_BYTES, decode=DECODABLE, what="KBS answer")
    except BodyTooLarge:
        raise ProtocolError("KBS answer too large") from None
    except BodyEncodingError as exc:
        raise ProtocolError(str(exc)) from None
    except BodyTransportError as exc:
        raise TransportError(f"{method} {url}: {exc}") from None
    except httpx.HTTPError as exc:
        raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        _forget_session_cookie(http)
    return Reply(resp.status_code, body, resp.headers, _session_from(resp))


def kbs_error(reply: Reply, context: Context) -> KbsHttpError:
    """Translate a KBS error answer into the typed exception for ``context``."""
    etype, detail = "", ""
    try:
        doc = strict_loads(reply.body[:65536]) if reply.body else {}
        if isinstance(doc, dict):
            t, d = doc.get("type"), doc.get("detail")
            etype = t.removeprefix(ERROR_TYPE_PREFIX) if isinstance(t, str) else ""
            detail = d[:500] if isinstance(d, str) else ""
    except ValueError:
        detail = reply.body[:200].decode("utf-8", "replace")
    st = reply.status
    if context in ("auth", "attest"):
        if "Protocol Version Mismatch" in detail:
            return VersionMismatch(st, etype, detail)
        return AttestationRejected(st, etype, detail)
    if context == "admin":
        if etype.startswith("AdminAuth") or st in (401, 403):
            return AdminDenied(st, etype, detail)
        return KbsHttpError(st, etype, detail)
    if etype == "PolicyDeny":
        return PolicyDenied(st, etype, detail)
    if etype in ("TokenNotFound", "TokenVerifierError"):
        return Unauthorized(st, etype, detail)
    if etype == "PluginInternalError" or st == 404:
        return ResourceNotFound(st, etype, detail)
    return KbsHttpError(st, etype, detail)
