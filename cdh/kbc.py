"""Resource URIs and the two KBCs the CDH supports.

* :class:`CcKbc`: token from the Attestation Agent (``GetToken("kbs")`` ->
  ``{"token", "tee_keypair"}``), then ``GET <kbs>/kbs/v0/<plugin>/<path>``
  with ``Authorization: Bearer`` and the JWE answer decrypted with the TEE
  key. As upstream's token client, ONE token is kept and reused until it
  expires or the KBS rejects it: any 401 from the KBS re-attests (a new
  ``GetToken``) and retries, up to :data:`KBS_GET_RESOURCE_MAX_ATTEMPTS`
  requests in all. Concurrent callers share a single in-flight ``GetToken``.
* :class:`OfflineFsKbc`: JSON maps ``{"repo/type/tag": "<base64>"}`` on disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cdh.crypto import CryptoError, strict_json
from cdh.errors import ConfigError, ResourceError, ResourceNotFound, TokenError
from cdh.files import read_limited
from coco_common.http_body import ACCEPT_DECODABLE, DECODABLE, BodyTooLarge, HttpBodyError, read_body
from coco_common.strict_json import strict_loads
from coco_rpc import RpcError
from kbs_client.errors import InvalidUri
from kbs_client.uri import ResourceUri

if TYPE_CHECKING:  # httpx is imported with the first KBS client: ~0.1 s less start-up
    import httpx

    from kbs_client.tee_key import TeeKeyPair

__all__ = [
    "KBS_GET_RESOURCE_MAX_ATTEMPTS",
    "MAX_RESOURCE_BYTES",
    "OFFLINE_FS_DEFAULT_FILES",
    "CcKbc",
    "JweDecrypter",
    "KbsToken",
    "OfflineFsKbc",
    "ResourceGetter",
    "ResourceUri",
    "TokenCache",
    "parse_resource_uri",
    "parse_token_response",
]

log = logging.getLogger(__name__)

MAX_RESOURCE_BYTES = 4 << 20  # ttRPC's message limit bounds what we can return anyway
MAX_KBS_RESPONSE_BYTES = 8 << 20  # JWE JSON of a MAX_RESOURCE_BYTES payload (base64url)
MAX_TOKEN_RESPONSE_BYTES = 1 << 20
TOKEN_EXPIRY_MARGIN_S = 10.0
#: resource requests per ``get_resource`` (upstream ``KBS_GET_RESOURCE_MAX_ATTEMPT``)
KBS_GET_RESOURCE_MAX_ATTEMPTS = 3
OFFLINE_FS_DEFAULT_FILES = (
    Path("/etc/aa-offline_fs_kbc-keys.json"),
    Path("/etc/aa-offline_fs_kbc-resources.json"),
)
MAX_OFFLINE_FILE_BYTES = 16 << 20


class ResourceGetter(Protocol):
    async def get_resource(self, uri: str) -> bytes: ...


JweDecrypter = Callable[[str, bytes], bytes]
"""``(tee private key PEM, JWE response body) -> plaintext``."""


# --------------------------------------------------------------------------- URIs


def parse_resource_uri(untrusted_uri: str) -> ResourceUri:
    """``kbs[+<plugin>]://[<host>[:port]]/<seg>/...[?query]``, checked by
    :class:`kbs_client.uri.ResourceUri` (host and port are ignored when
    fetching, as upstream). The scheme is required (a bare ``repo/type/tag``
    is not a URI here) and every character must be printable ASCII."""
    if (
        "://" not in untrusted_uri
        or not untrusted_uri.isascii()
        or not untrusted_uri.isprintable()
        or " " in untrusted_uri
    ):
        raise ResourceError(f"not a KBS resource URI (want kbs:///repo/type/tag): {untrusted_uri[:200]!r}")
    try:
        return ResourceUri.parse(untrusted_uri)
    except InvalidUri as exc:
        raise ResourceError(f"not a KBS resource URI (want kbs:///repo/type/tag): {exc}") from exc


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class KbsToken:
    token: str
    tee_keypair_pem: str
    expires_at: float | None  # epoch seconds from the JWT's exp (decoded, not verified)

    def __repr__(self) -> str:  # never show the key
        return f"KbsToken(expires_at={self.expires_at})"


def _jwt_expiry(token: str) -> float | None:
    """The JWT's ``exp`` (decoded, not verified), or ``None`` when there is no
    usable one: the KBS's rejection of the token then triggers the refetch."""
    try:
        payload = token.split(".")[1]
        claims = strict_loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        value = float(exp)
    except (IndexError, ValueError, binascii.Error, OverflowError):
        return None
    return value if math.isfinite(value) else None


def parse_token_response(untrusted_body: bytes) -> KbsToken:
    """Parse AA's ``GetToken("kbs")`` answer ``{"token": "<JWT>", "tee_keypair": "<PEM>"}``."""
    try:
        obj = strict_json(untrusted_body, limit=MAX_TOKEN_RESPONSE_BYTES)
    except CryptoError as exc:
        raise TokenError(f"AA token response: {exc}") from exc
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("token"), str)
        or not isinstance(obj.get("tee_keypair"), str)
    ):
        raise TokenError("AA token response lacks token/tee_keypair strings")
    return KbsToken(obj["token"], obj["tee_keypair"], _jwt_expiry(obj["token"]))


class TokenCache:
    """Holds one token; concurrent :meth:`get` calls share one fetch."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[bytes]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: KbsToken | None = None
        self._inflight: asyncio.Future[KbsToken] | None = None
        self.fetches = 0  # how many times AA was asked (for tests and benchmarks)

    def _valid(self, tok: KbsToken) -> bool:
        return tok.expires_at is None or tok.expires_at - TOKEN_EXPIRY_MARGIN_S > self._clock()

    def invalidate(self, tok: KbsToken) -> None:
        """Forget ``tok`` (if it is still the current one)."""
        if self._token is tok:
            self._token = None

    async def get(self) -> KbsToken:
        tok = self._token
        if tok is not None and self._valid(tok):
            return tok
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._do_fetch())
        fut = self._inflight
        return await asyncio.shield(fut)

    async def _do_fetch(self) -> KbsToken:
        try:
            self.fetches += 1
            try:
                raw = await self._fetch()
            except TokenError:
                raise
            except RpcError as exc:
                raise TokenError(f"cannot get a KBS token from the attestation agent: {exc}") from exc
            except Exception as exc:  # its text could hold anything, the TEE key included
                raise TokenError(
                    f"cannot get a KBS token from the attestation agent: {type(exc).__name__}"
                ) from exc
            tok = parse_token_response(raw)
            self._token = tok
            return tok
        finally:
            self._inflight = None


# --------------------------------------------------------------------------- cc_kbc


@functools.lru_cache(maxsize=2)
def _tee_key(pem: str) -> TeeKeyPair:
    """The token's TEE key, parsed once per token rather than per resource (loading an
    RSA key checks it: ~10-100 ms; the token already holds the same PEM in memory)."""
    from kbs_client.tee_key import TeeKeyPair

    return TeeKeyPair.from_pem(pem.encode())


def _default_decrypter(pem: str, body: bytes) -> bytes:
    out: bytes = _tee_key(pem).decrypt(body)
    return out


_ERROR_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _http_error() -> type[httpx.HTTPError]:
    import httpx

    return httpx.HTTPError


def _transport_reason(exc: httpx.HTTPError) -> str:
    """The cause of a failed KBS exchange and its fix, in words (no secret: h11 quotes
    header values, so the exception's own text is never used)."""
    cur: BaseException | None = exc
    for _ in range(16):
        if cur is None:
            break
        if isinstance(cur, ssl.SSLCertVerificationError):
            return (
                f"TLS: the KBS certificate is not trusted ({cur.verify_message or 'verify failed'}); "
                "set [kbc] kbs_cert to the KBS's CA certificate (PEM)"
            )
        if isinstance(cur, ssl.SSLError):
            return "TLS handshake failed; is the KBS URL's scheme (https://) right?"
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused; is the KBS running, is [kbc] url right?"
        cur = cur.__cause__ or cur.__context__
    import httpx  # loaded already: ``exc`` is one of its errors

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


class CcKbc:
    """``cc_kbc``: resources from a KBS with a token provided by the AA."""

    def __init__(
        self,
        kbs_url: str,
        token_fetch: Callable[[], Awaitable[bytes]],
        *,
        kbs_cert: str | None = None,
        http: httpx.AsyncClient | None = None,
        decrypt: JweDecrypter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kbs_url = kbs_url.rstrip("/")
        self.tokens = TokenCache(token_fetch, clock=clock)
        self._decrypt = decrypt or _default_decrypter
        self._verify: ssl.SSLContext | bool = True
        if http is None and kbs_cert:
            ctx = ssl.create_default_context()
            try:
                ctx.load_verify_locations(cadata=kbs_cert)
            except ssl.SSLError as exc:
                raise ConfigError("kbc.kbs_cert is not a PEM certificate") from exc
            self._verify = ctx
        self._http = http  # made on first use: httpx is not imported before a resource is asked for

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                timeout=60.0,
                verify=self._verify,
                headers={"User-Agent": "coco-py-cdh"},
                trust_env=False,  # CA bundle and route from the config only, never the environment
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _get_once(self, uri: ResourceUri, tok: KbsToken) -> tuple[int, bytes]:
        url = self.kbs_url + uri.kbs_path()
        try:
            hdrs = {"Authorization": f"Bearer {tok.token}", "Accept-Encoding": ACCEPT_DECODABLE}
            async with self._client().stream("GET", url, headers=hdrs) as r:
                body = await read_body(
                    r, MAX_KBS_RESPONSE_BYTES, decode=DECODABLE, what=f"KBS response for {uri}"
                )
                return r.status_code, body
        except BodyTooLarge:
            raise ResourceError(f"KBS response for {uri} is too large") from None
        except HttpBodyError as exc:  # refused/corrupt coding, connection cut or stalled mid-body
            raise ResourceError(f"cannot read the KBS response for {uri}: {exc}") from None
        except _http_error() as exc:
            raise ResourceError(f"cannot reach the KBS at {self.kbs_url}: {_transport_reason(exc)}") from exc

    @staticmethod
    def _error_type(body: bytes) -> str:
        try:
            obj = strict_loads(body[:65536])
        except ValueError:
            return ""
        t = obj.get("type", "") if isinstance(obj, dict) else ""
        kind = t.rsplit("/", 1)[-1] if isinstance(t, str) else ""
        return kind if _ERROR_KIND.fullmatch(kind) else ""  # it ends up in messages and logs

    async def get_resource(self, uri: str) -> bytes:
        ruri = parse_resource_uri(uri)
        if not self.kbs_url:  # accepted at start-up, as upstream; this is the error it then gives
            raise ResourceError(
                "http request failed: get failed: relative URL without a base (kbc.url is empty)"
            )
        for attempt in range(1, KBS_GET_RESOURCE_MAX_ATTEMPTS + 1):
            tok = await self.tokens.get()
            status, body = await self._get_once(ruri, tok)
            if status != 401:
                break
            # as upstream: any 401 (whatever the error type) drops the token and attests again
            log.warning(
                "KBS answered 401 (%s) for %s, attempt %d of %d: getting a new token",
                self._error_type(body) or "no error type",
                ruri,
                attempt,
                KBS_GET_RESOURCE_MAX_ATTEMPTS,
            )
            self.tokens.invalidate(tok)
        if status == 404:
            raise ResourceNotFound(f"KBS has no plugin or path for {ruri}")
        if status != 200:
            kind = self._error_type(body) or f"HTTP {status}"
            if status == 401:
                kind = f"{kind}, request unauthorized after {KBS_GET_RESOURCE_MAX_ATTEMPTS} attempts"
            if kind.startswith("PluginInternalError"):
                raise ResourceNotFound(f"KBS refused {ruri}: {kind} (resource missing or invalid)")
            raise ResourceError(f"KBS refused {ruri}: {kind}")
        try:
            plain = self._decrypt(tok.tee_keypair_pem, body)
        except Exception as exc:
            raise ResourceError(f"cannot decrypt the KBS response for {ruri}: {type(exc).__name__}") from exc
        if len(plain) > MAX_RESOURCE_BYTES:
            raise ResourceError(f"resource {ruri} is larger than {MAX_RESOURCE_BYTES} bytes")
        return plain


# --------------------------------------------------------------------------- offline_fs_kbc


class OfflineFsKbc:
    """``offline_fs_kbc``: resources from JSON files ``{"repo/type/tag": "<base64>"}``.

    Missing files are ignored; extra files come from ``OFFLINE_FS_KBC_EXTRA_FILE_PATH``
    (comma separated)."""

    def __init__(self, files: Iterable[Path] | None = None, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        paths = list(OFFLINE_FS_DEFAULT_FILES if files is None else files)
        extra = env.get("OFFLINE_FS_KBC_EXTRA_FILE_PATH", "")
        paths += [Path(p) for p in extra.split(",") if p]
        self.files = tuple(paths)

    def _load(self) -> dict[str, str]:
        table: dict[str, str] = {}
        for p in self.files:
            try:
                raw = read_limited(p, MAX_OFFLINE_FILE_BYTES)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ResourceError(f"cannot read offline resource file {p}: {exc.strerror}") from exc
            try:
                obj = strict_json(raw, limit=MAX_OFFLINE_FILE_BYTES)
            except CryptoError as exc:
                raise ResourceError(f"offline resource file {p}: {exc}") from exc
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise ResourceError(f"offline resource file {p} must map names to base64 strings")
            table.update(obj)
        return table

    async def get_resource(self, uri: str) -> bytes:
        ruri = parse_resource_uri(uri)
        if ruri.plugin != "resource":
            raise ResourceError(f"offline_fs_kbc serves only kbs:///repo/type/tag, not {ruri}")
        value = self._load().get(ruri.resource_path)
        if value is None:
            raise ResourceNotFound(f"offline_fs_kbc has no resource {ruri.resource_path}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ResourceError(f"offline resource {ruri.resource_path} is not valid base64") from exc
