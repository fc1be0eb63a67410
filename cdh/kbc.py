"""Resource URIs and the two KBCs the CDH supports.

* :class:`CcKbc`: resources from a KBS with the token the Attestation Agent
  provides (``GetToken("kbs")`` -> ``{"token", "tee_keypair"}``): a thin
  adapter over :class:`kbs_client.resources.ResourceClient`, which keeps ONE
  token until it expires or the KBS rejects it (any 401 re-attests and
  retries, :data:`KBS_GET_RESOURCE_MAX_ATTEMPTS` requests in all), lets
  concurrent callers share a single in-flight ``GetToken``, bounds what it
  reads and decrypts the JWE. Its errors become the CDH's in one place.
* :class:`OfflineFsKbc`: JSON maps ``{"repo/type/tag": "<base64>"}`` on disk.
"""

from __future__ import annotations

import functools
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cdh.errors import CdhConfigError, NoSuchResource, ResourceError, TokenUnavailable
from cdh.files import read_limited
from coco_common.b64 import b64_decode
from coco_common.http import async_client
from coco_common.strict_json import strict_loads
from coco_rpc import RpcError
from kbs_client.errors import KbsHttpError, ResourceNotFound, TransportError
from kbs_protocol.errors import InvalidUri, JweError, KbsProtocolError, TeeKeyError
from kbs_protocol.uri import ResourceUri

if TYPE_CHECKING:  # httpx and the crypto stack load with the first KBS request: less start-up time
    import httpx

    from kbs_client.rcar import Attestation
    from kbs_client.resources import ResourceClient
    from kbs_client.tee_key import TeeKeyPair

__all__ = [
    "KBS_GET_RESOURCE_MAX_ATTEMPTS",
    "MAX_RESOURCE_BYTES",
    "OFFLINE_FS_DEFAULT_FILES",
    "AaToken",
    "CcKbc",
    "Kbc",
    "OfflineFsKbc",
    "ResourceGetter",
    "parse_resource_uri",
    "parse_token_response",
]

MAX_RESOURCE_BYTES = 4 << 20  # ttRPC's message limit bounds what we can return anyway
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


class Kbc(ResourceGetter, Protocol):
    """A KBC the hub owns: it gets resources and is closed with the hub."""

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- URIs


def parse_resource_uri(untrusted_uri: str) -> ResourceUri:
    """``kbs[+<plugin>]://[<host>[:port]]/<seg>/...[?query]``, checked by
    :class:`kbs_protocol.uri.ResourceUri` (host and port are ignored when
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
class AaToken:
    """AA's ``GetToken("kbs")`` answer: the KBS token and the TEE key it binds."""

    token: str
    tee_keypair_pem: str

    def __repr__(self) -> str:  # never show the key (nor the bearer token)
        return "AaToken(...)"


def parse_token_response(untrusted_body: bytes) -> AaToken:
    """Parse AA's ``GetToken("kbs")`` answer ``{"token": "<JWT>", "tee_keypair": "<PEM>"}``."""
    obj = strict_loads(
        untrusted_body, limit=MAX_TOKEN_RESPONSE_BYTES, error=TokenUnavailable, what="AA token response"
    )
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("token"), str)
        or not isinstance(obj.get("tee_keypair"), str)
    ):
        raise TokenUnavailable("AA token response lacks token/tee_keypair strings")
    return AaToken(obj["token"], obj["tee_keypair"])


@functools.lru_cache(maxsize=2)
def _tee_key(pem: str) -> TeeKeyPair:
    """The token's TEE key, parsed once per token (loading an RSA key checks it: ~10-100 ms)."""
    from kbs_client.tee_key import TeeKeyPair

    return TeeKeyPair.from_pem(pem.encode())


# --------------------------------------------------------------------------- cc_kbc


def _cdh_error(exc: KbsProtocolError, ruri: ResourceUri, kbs_url: str, attempts: int) -> ResourceError:
    """The CDH error for what the KBS client raised (the one translation point)."""
    if isinstance(exc, TransportError):
        return ResourceError(f"cannot reach the KBS at {kbs_url}: {exc}")
    if isinstance(exc, KbsHttpError):
        if isinstance(exc, ResourceNotFound) and exc.status == 404:
            return NoSuchResource(f"KBS has no plugin or path for {ruri}")
        kind = exc.error_type or f"HTTP {exc.status}"
        if exc.status == 401:
            kind = f"{kind}, request unauthorized after {attempts} attempts"
        if isinstance(exc, ResourceNotFound):
            return NoSuchResource(f"KBS refused {ruri}: {kind} (resource missing or invalid)")
        return ResourceError(f"KBS refused {ruri}: {kind}")
    if isinstance(exc, JweError):  # the class only: a decryption failure says nothing more useful
        return ResourceError(f"cannot decrypt the KBS response for {ruri}: {type(exc).__name__}")
    return ResourceError(f"KBS answer for {ruri} is unusable: {exc}")


class CcKbc:
    """``cc_kbc``: resources from a KBS with a token provided by the AA."""

    def __init__(
        self,
        kbs_url: str,
        token_fetch: Callable[[], Awaitable[bytes]],
        *,
        kbs_cert: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kbs_url = kbs_url.rstrip("/")
        self._token_fetch = token_fetch
        self._clock = clock
        self._verify: ssl.SSLContext | bool = True
        if http is None and kbs_cert:
            ctx = ssl.create_default_context()
            try:
                ctx.load_verify_locations(cadata=kbs_cert)
            except ssl.SSLError as exc:
                raise CdhConfigError("kbc.kbs_cert is not a PEM certificate") from exc
            self._verify = ctx
        self._http = http  # made on first use: httpx is not imported before a resource is asked for
        self._client: ResourceClient | None = None

    def resource_client(self) -> ResourceClient:
        """The KBS client holding the token (made on first use)."""
        if self._client is None:
            from kbs_client.resources import ResourceClient

            if self._http is None:  # CA bundle and route from the config only, never the environment
                self._http = async_client(
                    verify=self._verify, timeout=60.0, headers={"User-Agent": "coco-py-cdh"}
                )
            self._client = ResourceClient(
                self._http,
                self.kbs_url,
                self._new_token,
                attempts=KBS_GET_RESOURCE_MAX_ATTEMPTS,
                max_resource_bytes=MAX_RESOURCE_BYTES,
                freshness_margin=TOKEN_EXPIRY_MARGIN_S,
                clock=self._clock,
            )
        return self._client

    async def _new_token(self) -> Attestation:
        """AA's GetToken("kbs") as the KBS client's token provider."""
        from kbs_client.rcar import Attestation

        try:
            raw = await self._token_fetch()
        except TokenUnavailable:
            raise
        except RpcError as exc:
            raise TokenUnavailable(f"cannot get a KBS token from the attestation agent: {exc}") from exc
        except Exception as exc:
            # from None: its text and its causes could hold anything, the TEE key included
            raise TokenUnavailable(
                f"cannot get a KBS token from the attestation agent: {type(exc).__name__}"
            ) from None
        tok = parse_token_response(raw)
        try:
            key = _tee_key(tok.tee_keypair_pem)
        except TeeKeyError as exc:
            raise TokenUnavailable(f"AA token response: tee_keypair is not a usable key: {exc}") from exc
        return Attestation.opaque(tok.token, key)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def get_resource(self, uri: str) -> bytes:
        ruri = parse_resource_uri(uri)
        if not self.kbs_url:  # accepted at start-up, as upstream; this is the error it then gives
            raise ResourceError(
                "http request failed: get failed: relative URL without a base (kbc.url is empty)"
            )
        client = self.resource_client()
        try:
            return await client.get(ruri)
        except KbsProtocolError as exc:
            raise _cdh_error(exc, ruri, self.kbs_url, client.attempts) from exc


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
            obj = strict_loads(raw, error=ResourceError, what=f"offline resource file {p}")
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise ResourceError(f"offline resource file {p} must map names to base64 strings")
            table.update(obj)
        return table

    async def close(self) -> None:
        """Nothing to release: the files are read per request."""

    async def get_resource(self, uri: str) -> bytes:
        ruri = parse_resource_uri(uri)
        if ruri.plugin != "resource":
            raise ResourceError(f"offline_fs_kbc serves only kbs:///repo/type/tag, not {ruri}")
        value = self._load().get(ruri.resource_path)
        if value is None:
            raise NoSuchResource(f"offline_fs_kbc has no resource {ruri.resource_path}")
        try:
            return b64_decode(value)
        except ValueError as exc:
            raise ResourceError(f"offline resource {ruri.resource_path} is not valid base64") from exc
