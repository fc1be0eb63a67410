"""OCI distribution client on one injected ``httpx.AsyncClient``.

What it does, and where the rules come from (reference/oci.md §1):

* ping ``/v2/`` once per registry; challenges from that response decide the
  scheme: Bearer (token dance, one token per scope, cached until expiry,
  refreshed on 401, ``insufficient_scope`` upgrade) or Basic (on every request);
* manifests by tag or digest with the OCI and Docker Accept types; the body is
  hashed and checked against the requested digest and against
  ``Docker-Content-Digest`` when the registry sends one; bodies are bounded;
* blobs streamed through a caller's sink with size and digest checks, resuming
  an interrupted body with ``Range: bytes=N-`` (only a matching ``206`` counts);
* redirects followed by hand (at most :data:`MAX_REDIRECTS`), dropping
  ``Authorization`` whenever the origin changes and refusing https->http
  downgrades to hosts not configured insecure;
* retries with exponential backoff for connection errors, 5xx and 429
  (honouring ``Retry-After``, capped);
* plain HTTP only for registries listed as insecure.

Credentials never appear in exceptions or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from coco_common.http import async_client
from coco_common.http_body import (
    DECODABLE,
    BodyEncodingError,
    BodyTooLarge,
    BodyTransportError,
    SpeedLimit,
    aiter_body,
    check_codings,
    read_body,
)
from coco_common.strict_json import strict_loads
from image_pull.auth import (
    AuthChallenge,
    AuthFile,
    Credentials,
    RegistryToken,
    parse_challenges,
    parse_token_response,
)
from image_pull.errors import (
    AuthError,
    DigestMismatch,
    ImagePullError,
    NotFound,
    RateLimited,
    RegistryError,
    TooLarge,
    TransferError,
)
from image_pull.manifest import MANIFEST_ACCEPT
from image_pull.reference import Reference, parse_digest
from image_pull.registries_conf import ProxyConfig

__all__ = [
    "MAX_CONFIG_SIZE",
    "MAX_ERROR_BODY",
    "MAX_MANIFEST_SIZE",
    "MAX_REDIRECTS",
    "FetchedManifest",
    "RegistryClient",
    "RetryPolicy",
    "http_client",
    "ssl_context",
]

log = logging.getLogger("image_pull.registry")


class _TrustOnFirstConnection(ssl.SSLContext):
    """A TLS client context as ``ssl.create_default_context()`` makes, except that the
    system trust store is read when the first TLS connection is wrapped, not when the
    client is made: reading it costs ~30 ms of every pull's start-up, and a plain-HTTP
    pull never needs it. No handshake can start before it is loaded."""

    _trust_lock = threading.Lock()
    _trust_loaded = False

    def _load_trust(self) -> None:
        if not self._trust_loaded:
            with self._trust_lock:
                if not self._trust_loaded:
                    self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                    self._trust_loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_trust()
        return super().wrap_bio(*args, **kwargs)


def ssl_context(extra_root_certs: tuple[bytes, ...] = ()) -> ssl.SSLContext:
    """The system trust store (read at the first TLS connection) plus ``extra_root_certs`` (PEM)."""
    ctx = _TrustOnFirstConnection(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if sys.version_info >= (3, 13):
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    keylog = os.environ.get("SSLKEYLOGFILE")  # as create_default_context does
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    for pem in extra_root_certs:
        try:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise RegistryError("an extra root certificate is not a valid PEM certificate") from exc
    return ctx


def _proxy_mounts(proxy: ProxyConfig, verify: ssl.SSLContext) -> dict[str, httpx.AsyncBaseTransport]:
    m: dict[str, httpx.AsyncBaseTransport] = {}
    for entry in proxy.no_proxy:
        e = entry.strip()
        if not e:
            continue
        if e == "*":
            return {}
        dom = e.removeprefix("*.").removeprefix(".")
        direct = httpx.AsyncHTTPTransport(verify=verify)
        m[f"all://{dom}"] = direct  # the host itself (host[:port] entries too)
        if not dom.replace(".", "").isdigit() and ":" not in dom:
            m[f"all://*.{dom}"] = direct  # and its subdomains, as curl's no_proxy does
    if proxy.https_proxy:
        m["https://"] = httpx.AsyncHTTPTransport(proxy=proxy.https_proxy, verify=verify)
    if proxy.http_proxy:
        m["http://"] = httpx.AsyncHTTPTransport(proxy=proxy.http_proxy, verify=verify)
    return m


def http_client(
    extra_root_certs: tuple[bytes, ...] = (), proxy: ProxyConfig | None = None
) -> httpx.AsyncClient:
    """The HTTP client for registry traffic: no environment, no automatic redirects
    (:class:`RegistryClient` follows them by hand), ``proxy`` as configured."""
    verify = ssl_context(extra_root_certs)
    mounts = _proxy_mounts(proxy, verify) if proxy is not None else {}
    return async_client(
        verify=verify,
        timeout=60.0,
        connect_timeout=30.0,
        mounts=mounts or None,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )


class _NoQueryInHttpxLogs(logging.Filter):
    """httpx logs every request URL at INFO; token URLs carry ``account=<username>``.
    Log them without their query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


if not any(isinstance(f, _NoQueryInHttpxLogs) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_NoQueryInHttpxLogs())

MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 4 << 20
MAX_ERROR_BODY = 1 << 20
MAX_REDIRECTS = 5
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries for a request that keeps failing transiently
    initial_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 10.0  # a Retry-After sleeps at most this long
    max_retry_wait: float = 60.0  # total sleeping between the tries of one request
    resume_attempts: int = 5  # Range resumes in a row without 1 MiB of progress in between
    response_timeout: float = 60.0  # request sent -> all response headers received
    # a body arriving slower than this many bytes/s over ``low_speed_time`` seconds of
    # waiting fails (and is retried/resumed like a cut connection); 0 disables
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0

    def speed(self) -> SpeedLimit | None:
        if self.low_speed_limit <= 0:
            return None
        return SpeedLimit(self.low_speed_limit, self.low_speed_time)


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes = field(repr=False)
    content_type: str | None
    digest: str  # digest of ``body`` (verified)


def _digest_of(algo: str, data: bytes) -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _hostport(url: httpx.URL) -> str:
    return f"{url.host}:{url.port}" if url.port else url.host


def _redact_url(url: httpx.URL | str) -> str:
    u = urlsplit(str(url))
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path}"


def _printable(untrusted: str, limit: int) -> str:
    """Registry-supplied text for an error message: printable characters only (no
    newlines or terminal escapes that could forge log lines), bounded."""
    return "".join(c for c in untrusted[: limit * 4] if c.isprintable())[:limit]


def _tls_failure(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, ssl.SSLError):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _connection_refused(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, ConnectionRefusedError):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _fatal_transport_error(exc: BaseException, url: httpx.URL, what: str) -> RegistryError | None:
    """The error for a transport failure no retry mends (TLS trust, connection refused)."""
    hp = _hostport(url)
    if _tls_failure(exc):
        return RegistryError(
            f"{what}: TLS handshake with {hp} failed (untrusted or invalid certificate): "
            f"add the registry's CA (coco-image pull --ca-file CA.pem), or if {hp} serves "
            f"plain HTTP allow that for it (coco-image pull --plain-http {hp}; "
            "registries.conf: insecure = true)"
        )
    if _connection_refused(exc):
        return RegistryError(
            f"{what}: cannot connect to {hp} (connection refused): is the registry "
            "running, and is the host:port in the image reference right?"
        )
    return None


class _Registry:
    """Per-endpoint auth state."""

    def __init__(self) -> None:
        self.pinged = False
        self.ping_error: RegistryError | None = None  # a failed ping fails later requests at once
        self.challenge: AuthChallenge | None = None
        self.tokens: dict[str, RegistryToken] = {}
        self.lock = asyncio.Lock()


class RegistryClient:
    """One client per pull (or per process); safe for concurrent use in one event loop."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        auth: AuthFile | None = None,
        insecure_registries: frozenset[str] = frozenset(),
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._auth = auth or AuthFile()
        self._insecure = frozenset(h.lower() for h in insecure_registries)
        self._retry = retry
        self._sleep = sleep
        self._registries: dict[str, _Registry] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client (signature lookaside fetches share its proxy and trust roots)."""
        return self._http

    # ------------------------------------------------------------------ helpers
    def scheme_for(self, endpoint: str) -> str:
        return "http" if endpoint.lower() in self._insecure else "https"

    def _base(self, ref: Reference) -> str:
        return f"{self.scheme_for(ref.endpoint)}://{ref.endpoint}"

    def _state(self, endpoint: str) -> _Registry:
        st = self._registries.get(endpoint)
        if st is None:
            st = self._registries[endpoint] = _Registry()
        return st

    def _creds(self, ref: Reference) -> Credentials | None:
        return self._auth.lookup(ref)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        delay = min(self._retry.initial_delay * (2**attempt), self._retry.max_delay)
        return float(delay * (0.8 + 0.4 * random.random()))

    async def _backoff(self, attempt: int, retry_after: float | None) -> None:
        await self._sleep(self._delay(attempt, retry_after))

    async def _read_limited(
        self, resp: httpx.Response, limit: int, what: str, *, decode: frozenset[str] = frozenset()
    ) -> bytes:
        """The body, bounded after decoding (only ``decode`` codings are accepted)."""
        try:
            return await read_body(resp, limit, decode=decode, speed=self._retry.speed(), what=what)
        except BodyTooLarge as exc:
            raise TooLarge(str(exc)) from exc
        except BodyEncodingError as exc:
            raise RegistryError(str(exc)) from exc
        except BodyTransportError as exc:
            raise TransferError(str(exc)) from exc

    async def _error_for(self, resp: httpx.Response, what: str) -> ImagePullError:
        """Turn a non-success response into a typed error with a short reason."""
        try:
            body = await self._read_limited(resp, MAX_ERROR_BODY, "error body", decode=DECODABLE)
        except RegistryError:
            body = b""
        reason = ""
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        if ctype == "application/json" or body[:1] == b"{":
            try:
                doc = strict_loads(body)
                errs = doc.get("errors") if isinstance(doc, dict) else None
                if isinstance(errs, list) and errs and isinstance(errs[0], dict):
                    code = _printable(str(errs[0].get("code", "")), 40)
                    msg = _printable(str(errs[0].get("message", "")), 160)
                    reason = f"{code}: {msg}" if code else msg
            except ValueError:  # also runaway nesting (a RecursionError escaped json.loads)
                reason = ""
        elif ctype:
            reason = f"non-JSON {_printable(ctype, 40)} body"
        status = resp.status_code
        text = f"{what}: HTTP {status}" + (f" ({reason})" if reason else "")
        if status in (401, 403):
            return AuthError(text + "; check the registry credentials (auth file)")
        if status == 404:
            return NotFound(text)
        if status == 429:
            return RateLimited(text + "; the registry is rate limiting, try later")
        return RegistryError(text)

    # ------------------------------------------------------------------ auth
    async def _ping(self, ref: Reference, st: _Registry) -> None:
        url = f"{self._base(ref)}/v2/"
        resp = await self._send("GET", httpx.URL(url), {}, ref, what="registry ping")
        try:
            if resp.status_code == 401 and _origin(resp.request.url) != _origin(httpx.URL(url)):
                raise AuthError(f"registry {ref.endpoint}: the ping was redirected to another host's login")
            if resp.status_code == 401:
                chs = parse_challenges(resp.headers.get_list("www-authenticate"))
                for ch in chs:
                    if ch.scheme == "bearer" and "realm" in ch.params:
                        st.challenge = ch
                        break
                    if ch.scheme == "basic" and st.challenge is None:
                        st.challenge = ch
            elif resp.status_code >= 400 and resp.status_code != 404:
                raise await self._error_for(resp, f"registry {ref.endpoint}")
        finally:
            await resp.aclose()
        st.pinged = True

    async def _fetch_token(self, ref: Reference, ch: AuthChallenge, scope: str) -> RegistryToken:
        realm = ch.params.get("realm", "")
        try:
            rurl = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise AuthError("registry sent an invalid token realm") from exc
        if rurl.scheme not in ("https", "http"):
            raise AuthError("registry token realm is not an http(s) URL")
        plain_ok = _hostport(rurl).lower() in self._insecure or self.scheme_for(ref.endpoint) == "http"
        if rurl.scheme == "http" and not plain_ok:
            raise AuthError("registry token realm uses plain HTTP; refusing to send credentials")
        creds = self._creds(ref)
        q: list[tuple[str, str]] = []
        if "service" in ch.params:
            q.append(("service", ch.params["service"]))
        q.append(("scope", scope))
        headers: dict[str, str] = {}
        if creds is not None:
            q.append(("account", creds.username))
            headers["Authorization"] = creds.basic_header()
        sep = "&" if rurl.query else "?"
        url = httpx.URL(str(rurl) + sep + urlencode(q))
        for attempt in range(self._retry.attempts):
            try:
                return await self._token_once(url, rurl, headers, ref)
            except TransferError as exc:
                if attempt + 1 >= self._retry.attempts:
                    raise
                log.info("token request: %s; retrying", exc)
                await self._backoff(attempt, None)
        raise AssertionError("unreachable")

    async def _token_once(
        self, url: httpx.URL, rurl: httpx.URL, headers: dict[str, str], ref: Reference
    ) -> RegistryToken:
        resp = await self._send("GET", url, headers, ref, what="token request")
        try:
            if resp.status_code != 200:
                err = await self._error_for(resp, f"token request to {_redact_url(rurl)}")
                if resp.status_code in (401, 403):
                    raise AuthError(f"{err}") from err
                raise err
            body = await self._read_limited(resp, 1 << 20, "token response", decode=DECODABLE)
        finally:
            await resp.aclose()
        return parse_token_response(body, now_monotonic=time.monotonic(), now_wall=time.time())

    async def _auth_header(self, ref: Reference, scope: str, *, force: bool = False) -> str | None:
        st = self._state(ref.endpoint)
        async with st.lock:
            if st.ping_error is not None:
                raise st.ping_error
            if not st.pinged:
                try:
                    await self._ping(ref, st)
                except RegistryError as exc:
                    st.ping_error = exc
                    raise
            ch = st.challenge
            if ch is None:
                return None
            if ch.scheme == "basic":
                creds = self._creds(ref)
                return creds.basic_header() if creds is not None else None
            tok = st.tokens.get(scope)
            if tok is None or force or not tok.valid():
                tok = await self._fetch_token(ref, ch, scope)
                st.tokens[scope] = tok
            return f"Bearer {tok.token}"

    # ------------------------------------------------------------------ transport
    def _redirect_target(self, cur: httpx.URL, location: str, what: str) -> httpx.URL:
        """Where a redirect from ``cur`` goes: http(s) only, never https -> plain http
        unless that host is configured insecure."""
        try:
            nxt = httpx.URL(urljoin(str(cur), location))
        except httpx.InvalidURL:
            # no cause: a redirect URL carries signed query tokens
            raise RegistryError(f"{what}: invalid redirect location") from None
        if nxt.scheme not in ("http", "https"):
            raise RegistryError(f"{what}: redirect to a non-HTTP URL")
        downgrade = cur.scheme == "https" and nxt.scheme == "http"
        if downgrade and _hostport(nxt).lower() not in self._insecure:
            raise RegistryError(f"{what}: refusing redirect from https to plain http")
        return nxt

    async def _send(
        self, method: str, url: httpx.URL, headers: dict[str, str], ref: Reference, *, what: str
    ) -> httpx.Response:
        """Send with retries and hand-followed redirects; returns an open streaming response.

        Every request asks for ``identity``: the bodies a registry sends are
        content-addressed or small, and a coding would only let it inflate them.
        Response headers must arrive within ``response_timeout``; the sleeps
        between tries add up to at most ``max_retry_wait``.
        """
        attempt = 0
        waited = 0.0
        while True:
            cur = url
            hdrs = {"Accept-Encoding": "identity", **headers}
            try:
                for _hop in range(MAX_REDIRECTS + 1):
                    req = self._http.build_request(method, cur, headers=hdrs)
                    async with asyncio.timeout(self._retry.response_timeout):
                        resp = await self._http.send(req, stream=True, follow_redirects=False)
                    if resp.status_code in _REDIRECT_STATUS and "location" in resp.headers:
                        loc = resp.headers["location"]
                        await resp.aclose()
                        nxt = self._redirect_target(cur, loc, what)
                        if _origin(nxt) != _origin(cur):
                            hdrs.pop("Authorization", None)
                            log.info("%s: redirected to %s", what, _redact_url(nxt))
                        cur = nxt
                        continue
                    break
                else:
                    await resp.aclose()
                    raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects")
            except (httpx.TransportError, TimeoutError) as exc:
                # the errors below drop httpx's cause: its text carries the request URL,
                # query included (signed blob URLs hold tokens); _redact_url shows the rest
                fatal = _fatal_transport_error(exc, cur, what)
                if fatal is not None:
                    raise fatal from None
                name = "no response headers in time" if isinstance(exc, TimeoutError) else type(exc).__name__
                delay = self._delay(attempt, None)
                if attempt + 1 >= self._retry.attempts or waited + delay > self._retry.max_retry_wait:
                    raise RegistryError(f"{what}: {name} talking to {_redact_url(cur)}") from None
                log.info("%s: %s, retrying", what, name)
                await self._sleep(delay)
                waited += delay
                attempt += 1
                continue
            if resp.status_code in _RETRY_STATUS and attempt + 1 < self._retry.attempts:
                ra = _retry_after(resp.headers.get("retry-after"), time.time())
                if ra is not None and ra > self._retry.max_retry_after:
                    return resp  # the caller turns it into RateLimited/RegistryError
                delay = self._delay(attempt, ra)
                if waited + delay > self._retry.max_retry_wait:
                    return resp
                await resp.aclose()
                log.info("%s: HTTP %d, retrying", what, resp.status_code)
                await self._sleep(delay)
                waited += delay
                attempt += 1
                continue
            for w in resp.headers.get_list("warning"):
                log.warning("registry warning: %s", _printable(w, 200))
            return resp

    async def _authed_get(
        self, ref: Reference, path: str, headers: dict[str, str], *, what: str, method: str = "GET"
    ) -> httpx.Response:
        scope = f"repository:{ref.repository}:pull"
        url = httpx.URL(f"{self._base(ref)}{path}")
        force = False
        for _ in range(2):
            h = dict(headers)
            authz = await self._auth_header(ref, scope, force=force)
            if authz is not None:
                h["Authorization"] = authz
            resp = await self._send(method, url, h, ref, what=what)
            if resp.status_code != 401 or force:
                return resp
            if _origin(resp.request.url) != _origin(url):
                # a 401 from where a redirect led (blob storage): its challenge must not
                # choose the token realm our credentials go to
                return resp
            st = self._state(ref.endpoint)
            chs = parse_challenges(resp.headers.get_list("www-authenticate"))
            if st.challenge is None:
                # the ping was anonymous-friendly but this resource is not: adopt its challenge
                adopt = next((c for c in chs if c.scheme == "bearer" and "realm" in c.params), None)
                adopt = adopt or next((c for c in chs if c.scheme == "basic"), None)
                if adopt is None or (adopt.scheme == "basic" and self._creds(ref) is None):
                    return resp
                st.challenge = adopt
            elif st.challenge.scheme != "bearer":
                return resp
            # token expired or insufficient: one fresh token, possibly for the scope asked for
            for ch in chs:
                if ch.scheme == "bearer" and ch.params.get("scope", "").startswith("repository:"):
                    scope = ch.params["scope"]
            await resp.aclose()
            force = True
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ API
    async def get_manifest(
        self, ref: Reference, reference: str | None = None, *, limit: int = MAX_MANIFEST_SIZE
    ) -> FetchedManifest:
        """GET a manifest by tag or digest; verifies the digest and bounds the size."""
        target = reference or ref.reference
        what = f"manifest {ref.name}@{target}" if ":" in target else f"manifest {ref.name}:{target}"
        for attempt in range(self._retry.attempts):
            try:
                return await self._manifest_once(ref, target, what, limit)
            except TransferError as exc:  # cut, stalled or trickled body: fetch it again
                if attempt + 1 >= self._retry.attempts:
                    raise
                log.info("%s; retrying", exc)
                await self._backoff(attempt, None)
        raise AssertionError("unreachable")

    async def _manifest_once(self, ref: Reference, target: str, what: str, limit: int) -> FetchedManifest:
        resp = await self._authed_get(
            ref, f"/v2/{ref.repository}/manifests/{target}", {"Accept": MANIFEST_ACCEPT}, what=what
        )
        try:
            if resp.status_code != 200:
                raise await self._error_for(resp, what)
            body = await self._read_limited(resp, limit, what)
            ctype = resp.headers.get("content-type")
            header_digest = resp.headers.get("docker-content-digest")
        finally:
            await resp.aclose()
        if ":" in target and "@" not in target and target.split(":", 1)[0] in ("sha256", "sha512"):
            algo = target.split(":", 1)[0]
            got = _digest_of(algo, body)
            if got != target:
                raise DigestMismatch(f"{what}: registry returned content with digest {got}")
            digest = target
        else:
            digest = _digest_of("sha256", body)
        if header_digest:
            algo = header_digest.split(":", 1)[0]
            if algo not in ("sha256", "sha512") or _digest_of(algo, body) != header_digest.strip():
                raise DigestMismatch(f"{what}: Docker-Content-Digest does not match the body")
        return FetchedManifest(body, ctype, digest)

    async def head_manifest(self, ref: Reference) -> str | None:
        """The digest the registry says ``ref``'s tag points at (HEAD, no body), or None.

        A HEAD is not counted as a pull by Docker Hub; a caller holding the
        manifest for that digest (content-addressed, hash-checked) can skip the GET.
        Any failure gives None: the GET that follows reports it properly.
        """
        what = f"manifest {ref.name}:{ref.reference}"
        try:
            resp = await self._authed_get(
                ref,
                f"/v2/{ref.repository}/manifests/{ref.reference}",
                {"Accept": MANIFEST_ACCEPT},
                what=what,
                method="HEAD",
            )
        except ImagePullError:
            return None
        try:
            if resp.status_code != 200:
                return None
            digest = (resp.headers.get("docker-content-digest") or "").strip()
        finally:
            await resp.aclose()
        try:
            return parse_digest(digest)
        except ImagePullError:
            return None

    async def get_blob(
        self, ref: Reference, digest: str, size: int, *, limit: int = MAX_CONFIG_SIZE
    ) -> bytes:
        """Small blob (config) into memory, digest- and size-checked."""
        if size > limit:
            raise TooLarge(f"blob {digest} is larger than {limit} bytes")
        buf = bytearray()

        async def sink(chunk: bytes) -> None:
            buf.extend(chunk)

        await self.stream_blob(ref, digest, size, sink)
        return bytes(buf)

    async def stream_blob(
        self,
        ref: Reference,
        digest: str,
        size: int,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream a blob into ``sink``; checks size and digest, resumes with Range.

        The sink sees every byte exactly once, in order. Raises DigestMismatch
        after the last chunk when the content does not match (the sink must
        then discard what it got). Returns the number of bytes received over
        the network.
        """
        algo = digest.split(":", 1)[0]
        hasher = hashlib.new(algo)
        offset = 0
        resumes = 0
        last_resume_offset = 0
        what = f"blob {digest}"
        path = f"/v2/{ref.repository}/blobs/{digest}"
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = await self._authed_get(ref, path, headers, what=what)
            interrupted = False
            try:
                if offset == 0:
                    if resp.status_code != 200:
                        raise await self._error_for(resp, what)
                else:
                    self._check_resume(resp, offset, size, what)
                try:
                    check_codings(resp, (), what)
                except BodyEncodingError as exc:
                    raise RegistryError(str(exc)) from exc
                cl = resp.headers.get("content-length")
                if resp.status_code == 200 and cl is not None and cl.isdigit() and int(cl) != size:
                    raise DigestMismatch(f"{what}: registry sends {cl} bytes, descriptor says {size}")
                body = aiter_body(resp, limit=size - offset, speed=self._retry.speed(), what=what)
                try:
                    async with contextlib.aclosing(body):
                        async for chunk in body:
                            hasher.update(chunk)
                            offset += len(chunk)
                            await sink(chunk)
                            if on_bytes is not None:
                                on_bytes(len(chunk))
                except BodyTooLarge as exc:
                    raise DigestMismatch(f"{what}: more data than the descriptor size {size}") from exc
                except BodyEncodingError as exc:
                    raise RegistryError(str(exc)) from exc
                except BodyTransportError as exc:
                    interrupted = True
                    log.info("%s: %s at byte %d", what, exc, offset)
            finally:
                await resp.aclose()
            if offset >= size:
                break
            # short body (cut connection or early close): resume from where we are
            if offset - last_resume_offset >= 1 << 20:
                resumes = 0  # real progress since the last cut: the budget starts again
            last_resume_offset = offset
            if resumes >= self._retry.resume_attempts:
                why = "connection lost" if interrupted else "body ended early"
                raise RegistryError(
                    f"{what}: {why} at byte {offset} of {size}, gave up after {resumes} resumes"
                )
            resumes += 1
            await self._backoff(0, None)
        got = f"{algo}:{hasher.hexdigest()}"
        if got != digest:
            raise DigestMismatch(f"{what}: content hashes to {got}")
        return offset

    @staticmethod
    def _check_resume(resp: httpx.Response, offset: int, size: int, what: str) -> None:
        if resp.status_code == 200:
            raise RegistryError(f"{what}: registry ignored the Range request, cannot resume")
        if resp.status_code != 206:
            raise RegistryError(f"{what}: resume answered HTTP {resp.status_code}")
        cr = resp.headers.get("content-range", "")
        try:
            unit, _, rest = cr.partition(" ")
            span, _, total = rest.partition("/")
            first, _, last = span.partition("-")
            ok = unit == "bytes" and int(first) == offset and (total == "*" or int(total) == size)
            if ok and last:
                ok = int(last) + 1 <= size
        except ValueError:
            ok = False
        if not ok:
            raise RegistryError(f"{what}: resume answered a mismatching Content-Range")
