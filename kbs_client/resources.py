"""Fetching resources: one-shot (:func:`get_resource`, passport mode) and a
:class:`ResourceClient` that holds one token, reuses it until it expires or
the KBS rejects it, and lets concurrent callers share one handshake."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from . import _http
from .errors import PolicyDenied, Unauthorized
from .rcar import Attestation, EvidenceSource, attest
from .tee_key import DEFAULT_ALGORITHM, TeeKeyPair
from .uri import ResourceUri

__all__ = ["ResourceClient", "TokenProvider", "get_resource"]

log = logging.getLogger(__name__)

#: returns a fresh token (and its key): an RCAR run, or AA's GetToken
TokenProvider = Callable[[], Awaitable[Attestation]]


def _uri(uri_or_path: str | ResourceUri) -> ResourceUri:
    return uri_or_path if isinstance(uri_or_path, ResourceUri) else ResourceUri.parse(uri_or_path)


async def get_resource(
    http: httpx.AsyncClient,
    base_url: str,
    uri_or_path: str | ResourceUri,
    *,
    token: str,
    key: TeeKeyPair,
    session_id: str | None = None,
    timeout: float = 60.0,
) -> bytes:
    """GET a resource with ``Authorization: Bearer <token>`` and decrypt the JWE.

    ``session_id`` (an attested ``kbs-session-id``) is sent as well when given;
    trustee prefers it over the bearer token. Raises :class:`Unauthorized`,
    :class:`PolicyDenied`, :class:`ResourceNotFound`, :class:`JweError`, ..."""
    uri = _uri(uri_or_path)
    reply = await _http.request(
        http,
        "GET",
        base_url.rstrip("/") + uri.kbs_path(),
        headers={"Authorization": f"Bearer {token}"},
        session_id=session_id,
        timeout=timeout,
    )
    if reply.status != 200:
        raise _http.kbs_error(reply, "resource")
    return key.decrypt(reply.json())


class ResourceClient:
    """Resource getter with token reuse and single-flight re-attestation.

    ``token_provider`` is called when there is no usable token; CDH passes
    one that asks AA's GetToken, :meth:`attesting` builds one running RCAR."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token_provider: TokenProvider,
        *,
        attempts: int = 3,
        timeout: float = 60.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._provider = token_provider
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._current: Attestation | None = None
        self._lock = asyncio.Lock()
        #: how many tokens were obtained (for tests and metrics)
        self.handshakes = 0

    @classmethod
    def attesting(
        cls,
        http: httpx.AsyncClient,
        base_url: str,
        source: EvidenceSource,
        *,
        key: TeeKeyPair | None = None,
        key_algorithm: str = DEFAULT_ALGORITHM,
        init_data_toml: str | None = None,
        attest_attempts: int = 5,
        retry_delay: float = 1.0,
        attempts: int = 3,
    ) -> ResourceClient:
        async def provider() -> Attestation:
            k = key if key is not None else TeeKeyPair.generate(key_algorithm)
            return await attest(
                http,
                base_url,
                source,
                key=k,
                init_data_toml=init_data_toml,
                attempts=attest_attempts,
                retry_delay=retry_delay,
            )

        return cls(http, base_url, provider, attempts=attempts)

    async def attestation(self) -> Attestation:
        """The current token, obtaining one when none is usable (one handshake for all callers)."""
        cur = self._current
        if cur is not None and cur.is_fresh():
            return cur
        async with self._lock:
            cur = self._current
            if cur is not None and cur.is_fresh():
                return cur
            fresh = await self._provider()
            self.handshakes += 1
            self._current = fresh
            return fresh

    def invalidate(self, stale: Attestation | None = None) -> None:
        """Drop the cached token (only if it is still ``stale``, when given)."""
        if stale is None or self._current is stale:
            self._current = None

    async def get(self, uri_or_path: str | ResourceUri) -> bytes:
        uri = _uri(uri_or_path)
        last: Exception | None = None
        for n in range(self._attempts):
            att = await self.attestation()
            try:
                return await get_resource(
                    self._http,
                    self._base,
                    uri,
                    token=att.token,
                    key=att.key,
                    session_id=att.session_id,
                    timeout=self._timeout,
                )
            except (Unauthorized, PolicyDenied) as exc:
                # trustee answers 401 for both; a new token may pass (expiry, new reference values)
                log.info(
                    "resource %s refused (%s), attempt %d/%d", uri, exc.error_type, n + 1, self._attempts
                )
                self.invalidate(att)
                last = exc
        assert last is not None
        raise last
