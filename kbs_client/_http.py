"""The one HTTP seam of :mod:`kbs_client`: an injected ``httpx.AsyncClient``."""

from __future__ import annotations

import json
import re
import ssl
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
from kbs_protocol.errors import ERROR_TYPE_PREFIX

from .errors import (
    AdminDenied,
    AttestationRejected,
    KbsHttpError,
    PolicyDenied,
    PolicyInvalid,
    ProtocolError,
    ResourceNotFound,
    TooLarge,
    TransportError,
    Unauthorized,
    VersionMismatch,
)

__all__ = ["SESSION_COOKIE", "Reply", "kbs_error", "request", "transport_error"]

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
        return strict_loads(self.body, error=ProtocolError, what="KBS answer")


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
    limit: int = MAX_RESPONSE_BYTES,
) -> Reply:
    hdrs = {"Accept-Encoding": ACCEPT_DECODABLE, **(headers or {})}
    if session_id is not None:
        hdrs["Cookie"] = f"{SESSION_COOKIE}={session_id}"
    if json_body is not None:
        content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        async with http.stream(method, url, content=content, headers=hdrs, timeout=timeout) as resp:
            body = await read_body(resp, limit, decode=DECODABLE, what="KBS answer")
    except BodyTooLarge as exc:
        raise TooLarge(f"KBS answer larger than {limit} bytes") from exc
    except BodyEncodingError as exc:
        raise ProtocolError(str(exc)) from exc
    except BodyTransportError as exc:
        raise TransportError(f"{method} {url}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise transport_error(method, url, exc) from exc
    finally:
        _forget_session_cookie(http)
    return Reply(resp.status_code, body, resp.headers, _session_from(resp))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 16:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def transport_error(method: str, url: str, exc: httpx.HTTPError) -> TransportError:
    """One line naming the cause and the fix; ``retryable`` only for what can heal.

    Never quotes the exception text of a request that could not be built: h11
    puts the offending header value (a bearer token) in it."""
    u = httpx.URL(url) if "://" in url else None
    where = f"{u.host}:{u.port or (443 if u.scheme == 'https' else 80)}" if u is not None else url[:200]
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            why = e.verify_message or "certificate verify failed"
            return TransportError(
                f"TLS: the certificate of the KBS at {where} is not trusted ({why}); "
                "give its CA certificate (kbs-client --cert-file; [kbc] kbs_cert in cdh.toml; "
                "token_configs.kbs.cert in aa.toml)",
                retryable=False,
            )
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return TransportError(
                f"TLS handshake with {where} failed ({getattr(e, 'reason', None) or 'SSL error'}); "
                "is the URL's scheme right, and does the KBS serve TLS?",
                retryable=False,
            )
        if isinstance(e, ConnectionRefusedError):
            return TransportError(
                f"cannot connect to {where} (connection refused): is the KBS running, is the URL right?",
                retryable=False,
            )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return TransportError(
            f"{url[:200]!r} is not an http:// or https:// URL (give the scheme, e.g. https://host:8080)",
            retryable=False,
        )
    if isinstance(exc, httpx.LocalProtocolError):
        return TransportError(
            f"{method} {where}: the request could not be built (a header value, such as the admin "
            "token, contains characters a header cannot carry)",
            retryable=False,
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{method} {url}: timed out talking to {where} (is the KBS overloaded?)")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)) and u is not None and u.scheme == "http":
        # permanent: a TLS port drops a plaintext request every time, so no retry can heal it
        return TransportError(
            f"{method} {url}: the server at {where} closed the connection without answering; "
            "does it expect https://?",
            retryable=False,
        )
    return TransportError(f"{method} {url}: {type(exc).__name__}: {exc}")


_VARIANT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _variant(untrusted_type: str) -> str:
    """The trustee variant name ending an RFC 7807 ``type`` (``.../errors/PolicyDeny``), or ""
    when it is no such name: it ends up in messages and logs, so no crafted line breaks."""
    name = untrusted_type.removeprefix(ERROR_TYPE_PREFIX).rsplit("/", 1)[-1]
    return name if _VARIANT.fullmatch(name) else ""


def _printable(untrusted: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in untrusted)


def kbs_error(reply: Reply, context: Context) -> KbsHttpError:
    """Translate a KBS error answer into the typed exception for ``context``."""
    etype, detail = "", ""
    try:
        doc = strict_loads(reply.body[:65536]) if reply.body else {}
        if isinstance(doc, dict):
            t, d = doc.get("type"), doc.get("detail")
            etype = _variant(t) if isinstance(t, str) else ""
            detail = _printable(d[:500]) if isinstance(d, str) else ""
    except ValueError:
        detail = _printable(reply.body[:200].decode("utf-8", "replace"))
    st = reply.status
    if context in ("auth", "attest"):
        if "Protocol Version Mismatch" in detail:
            return VersionMismatch(st, etype, detail)
        return AttestationRejected(st, etype, detail)
    if context == "admin":
        if etype.startswith("AdminAuth") or (not etype and st in (401, 403)):
            return AdminDenied(st, etype, detail)
        if (etype == "PluginInternalError" and "not found" in detail.lower()) or st == 404:
            return ResourceNotFound(st, etype, detail)
        if etype in ("ParsePolicyError", "PolicyEngineError"):
            return PolicyInvalid(st, etype, detail)
        return KbsHttpError(st, etype, detail)
    if etype == "PolicyDeny":
        return PolicyDenied(st, etype, detail)
    if etype in ("TokenNotFound", "TokenVerifierError"):
        return Unauthorized(st, etype, detail)
    if etype == "PluginInternalError" or st == 404:
        return ResourceNotFound(st, etype, detail)
    return KbsHttpError(st, etype, detail)
