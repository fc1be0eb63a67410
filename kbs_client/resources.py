"""Fetching resources: one-shot (:func:`get_resource`, passport mode) and a
:class:`ResourceClient` that holds one token, reuses it until it expires or
the KBS rejects it, and lets concurrent callers share one handshake."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from kbs_protocol.uri import ResourceUri

from . import _http
from .errors import KbsHttpError, TooLarge
from .rcar import Attestation, EvidenceSource, attest
from .tee_key import DEFAULT_ALGORITHM, TeeKeyPair

__all__ = ["ResourceClient", "TokenProvider", "get_resource", "response_limit"]

log = logging.getLogger(__name__)

#: returns a fresh token (and its key): an RCAR run, or AA's GetToken
TokenProvider = Callable[[], Awaitable[Attestation]]


def _uri(uri_or_path: str | ResourceUri) -> ResourceUri:
    return uri_or_path if isinstance(uri_or_path, ResourceUri) else ResourceUri.parse(uri_or_path)


def _consume(fut: asyncio.Future[Attestation]) -> None:
    if not fut.cancelled():
        fut.exception()


def response_limit(max_resource_bytes: int | None) -> int:
    """The largest JWE answer read for a resource of at most ``max_resource_bytes``:
    base64url grows it by a third, the JSON members add a little (and always the
    client's overall limit when there is no resource limit)."""
    if max_resource_bytes is None:
        return _http.MAX_RESPONSE_BYTES
    return min(_http.MAX_RESPONSE_BYTES, 2 * max_resource_bytes + 65536)


async def get_resource(
    http: httpx.AsyncClient,
    base_url: str,
    uri_or_path: str | ResourceUri,
    *,
    token: str,
    key: TeeKeyPair,
    session_id: str | None = None,
    timeout: float = 60.0,
    max_bytes: int | None = None,
) -> bytes:
    """GET a resource with ``Authorization: Bearer <token>`` and decrypt the JWE.

    ``session_id`` (an attested ``kbs-session-id``) is sent as well when given;
    trustee prefers it over the bearer token. ``max_bytes`` bounds the decrypted
    resource (and so the answer read). Raises :class:`Unauthorized`,
    :class:`PolicyDenied`, :class:`ResourceNotFound`, :class:`JweError`,
    :class:`TooLarge`, ..."""
    uri = _uri(uri_or_path)
    reply = await _http.request(
        http,
        "GET",
        base_url.rstrip("/") + uri.kbs_path(),
        headers={"Authorization": f"Bearer {token}"},
        session_id=session_id,
        timeout=timeout,
        limit=response_limit(max_bytes),
    )
    if reply.status != 200:
        raise _http.kbs_error(reply, "resource")
    plain = key.decrypt(reply.json())
    if max_bytes is not None and len(plain) > max_bytes:
        raise TooLarge(f"resource {uri} is larger than {max_bytes} bytes")
    return plain


class ResourceClient:
    """Resource getter with token reuse and single-flight re-attestation.

    ``token_provider`` is called when there is no usable token; CDH passes
    one that asks AA's GetToken, :meth:`attesting` builds one running RCAR.
    As guest-components' token client, any 401 from the KBS drops the token
    and retries with a new one (a new token may pass: expiry, a KBS restarted
    with a new signer, new reference values), ``attempts`` requests in all;
    every other answer, and a transport failure, is final at once."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token_provider: TokenProvider,
        *,
        attempts: int = 3,
        timeout: float = 60.0,
        max_resource_bytes: int | None = None,
        freshness_margin: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._provider = token_provider
        self.attempts = max(1, attempts)
        self._timeout = timeout
        self._max_bytes = max_resource_bytes
        self._margin = freshness_margin
        self._clock = clock
        self._current: Attestation | None = None
        self._inflight: asyncio.Future[Attestation] | None = None
        #: how many tokens were asked for, successful or not (for tests and metrics)
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

    def _usable(self, att: Attestation | None) -> bool:
        return att is not None and att.is_fresh(self._clock(), self._margin)

    async def attestation(self) -> Attestation:
        """The current token, obtaining one when none is usable. Concurrent callers share
        one provider call and its outcome (a failure is not kept: the next call tries again);
        a caller that is cancelled does not cancel it for the others."""
        cur = self._current
        if cur is not None and self._usable(cur):
            return cur
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._obtain())
            # read the outcome even when every caller was cancelled (no "never retrieved" noise)
            self._inflight.add_done_callback(_consume)
        return await asyncio.shield(self._inflight)

    async def _obtain(self) -> Attestation:
        try:
            self.handshakes += 1
            fresh = await self._provider()
            self._current = fresh
            return fresh
        finally:
            self._inflight = None

    def invalidate(self, stale: Attestation | None = None) -> None:
        """Drop the cached token (only if it is still ``stale``, when given)."""
        if stale is None or self._current is stale:
            self._current = None

    async def get(self, uri_or_path: str | ResourceUri) -> bytes:
        uri = _uri(uri_or_path)
        for n in range(1, self.attempts + 1):
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
                    max_bytes=self._max_bytes,
                )
            except KbsHttpError as exc:
                if exc.status != 401:
                    raise
                self.invalidate(att)
                if n == self.attempts:
                    raise
                log.warning(
                    "KBS answered 401 (%s) for %s, attempt %d of %d: getting a new token",
                    exc.error_type or "no error type",
                    uri,
                    n,
                    self.attempts,
                )
        raise AssertionError("unreachable")  # the loop returns or raises
