"""The RCAR handshake of KBS protocol 0.4.0 (reference §2-§3).

The pure parts (request bodies, report-data binding, answer parsing) are
plain functions; :func:`attest` strings them together over an injected
``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from coco_common.b64 import b64_encode
from coco_common.strict_json import strict_object
from kbs_protocol.errors import TokenError
from kbs_protocol.jcs import HASH_ALGORITHMS, hash_canonical
from kbs_protocol.jws import decode_unverified

from . import _http
from .errors import (
    AttestationRejected,
    KbsClientError,
    ProtocolError,
    TransportError,
    VersionMismatch,
)
from .tee_key import TeeKeyPair

__all__ = [
    "DEFAULT_HASH_ALGORITHM",
    "PROTOCOL_VERSION",
    "Attestation",
    "Challenge",
    "EvidenceSource",
    "attest",
    "attestation_body",
    "auth_body",
    "device_report_data",
    "primary_report_data",
    "runtime_data",
    "se_request_with_digest",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "0.4.0"
DEFAULT_HASH_ALGORITHM = "sha384"
#: what guest-components sends in ``extra-params.supported-hash-algorithms``
SUPPORTED_HASH_ALGORITHMS = ("sha256", "sha384", "sha512", "sm3")


@runtime_checkable
class EvidenceSource(Protocol):
    """Where the handshake gets its evidence from (an attester, or the sample source)."""

    #: kbs-types TEE name sent in /auth ("sample", "snp", "tdx", ...)
    tee: str

    async def primary_evidence(self, report_data: bytes) -> Any:
        """TEE evidence (JSON value) binding ``report_data``."""
        ...

    async def additional_evidence(self, device_report_data: bytes) -> str:
        """``""`` when there are no devices, else the JSON text of ``{"nvidia": {...}, ...}``."""
        ...


@dataclass(frozen=True)
class Challenge:
    nonce: str
    hash_algorithm: str
    session_id: str
    extra_params: Any = None

    @classmethod
    def from_reply(cls, untrusted_body: Any, session_id: str | None) -> Challenge:
        if not isinstance(untrusted_body, dict):
            raise ProtocolError("challenge is not a JSON object")
        nonce = untrusted_body.get("nonce")
        if not isinstance(nonce, str) or not nonce or len(nonce) > 4096:
            raise ProtocolError("challenge has no nonce string")
        if "extra-params" not in untrusted_body:
            raise ProtocolError("challenge has no extra-params")
        extra = untrusted_body["extra-params"]
        alg = DEFAULT_HASH_ALGORITHM
        if isinstance(extra, dict) and "selected-hash-algorithm" in extra:
            sel = extra["selected-hash-algorithm"]
            if not isinstance(sel, str) or sel.lower() not in HASH_ALGORITHMS:
                raise ProtocolError(f"KBS selected an unsupported hash algorithm {sel!r}")
            alg = sel.lower()
        if not session_id:
            raise ProtocolError("KBS set no kbs-session-id cookie")
        return cls(nonce=nonce, hash_algorithm=alg, session_id=session_id, extra_params=extra)


@dataclass(frozen=True)
class Attestation:
    """A token from the KBS together with the TEE key it binds."""

    #: bearer credentials (token, attested session cookie) stay out of repr and so out of logs
    token: str = field(repr=False)
    key: TeeKeyPair
    #: token claims as decoded WITHOUT verification (the KBS verifies; this is for expiry only)
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: ``exp`` claim (epoch seconds), None when absent
    expires_at: float | None = None
    session_id: str | None = field(default=None, repr=False)

    @classmethod
    def from_token(cls, token: str, key: TeeKeyPair, session_id: str | None = None) -> Attestation:
        """A token the KBS just issued: it must be a readable JWT."""
        try:
            _, claims = decode_unverified(token)
        except TokenError as exc:
            raise ProtocolError(f"KBS token unreadable: {exc}") from exc
        return cls(token=token, key=key, claims=claims, expires_at=_expiry(claims), session_id=session_id)

    @classmethod
    def opaque(cls, token: str, key: TeeKeyPair) -> Attestation:
        """A token handed over by someone else (the Attestation Agent's ``GetToken``): its
        claims are read when they can be, for the expiry only; one that cannot be read
        has no known expiry and is used until the KBS rejects it."""
        try:
            _, claims = decode_unverified(token)
        except TokenError:
            claims = {}
        return cls(token=token, key=key, claims=claims, expires_at=_expiry(claims))

    def is_fresh(self, now: float | None = None, margin: float = 5.0) -> bool:
        """True while ``exp`` / ``nbf`` (unverified) say the token is usable."""
        t = time.time() if now is None else now
        nbf = self.claims.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and t < nbf:
            return False
        return self.expires_at is None or t + margin < self.expires_at


def _expiry(claims: Mapping[str, Any]) -> float | None:
    """The ``exp`` claim as epoch seconds; None when absent or no usable time (a bool,
    a string, an integer too large for a float, infinity)."""
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        value = float(exp)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def auth_body(tee: str) -> dict[str, Any]:
    return {
        "version": PROTOCOL_VERSION,
        "tee": tee,
        "extra-params": {"supported-hash-algorithms": list(SUPPORTED_HASH_ALGORITHMS)},
    }


def se_request_with_digest(nonce: str, digest: bytes) -> bytes:
    """IBM SE: the ``/auth`` nonce is a JSON ``SeAttestationRequest``; the
    attester receives it with ``runtime_data_digest`` (base64) added."""
    req = strict_object(
        nonce, error=ProtocolError, what="Failed to deserialize SeAttestationRequest from nonce"
    )
    req["runtime_data_digest"] = b64_encode(digest)
    return json.dumps(req).encode()


def runtime_data(nonce: str, tee_pubkey: Mapping[str, Any]) -> dict[str, Any]:
    return {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)}


def device_report_data(hash_algorithm: str, nonce: str, tee_pubkey: Mapping[str, Any]) -> bytes:
    """``H(JCS({"nonce", "tee-pubkey"}))`` given to additional-device attesters."""
    return hash_canonical(hash_algorithm, runtime_data(nonce, tee_pubkey))


def primary_report_data(
    hash_algorithm: str, nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str
) -> bytes:
    """``H(JCS({"additional-evidence", "nonce", "tee-pubkey"}))`` for the primary TEE."""
    return hash_canonical(
        hash_algorithm,
        {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": dict(tee_pubkey)},
    )


def attestation_body(
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    primary_evidence: Any,
    additional_evidence: str,
    init_data_toml: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if init_data_toml is not None:
        body["init-data"] = {"format": "toml", "body": init_data_toml}
    body["runtime-data"] = runtime_data(nonce, tee_pubkey)
    body["tee-evidence"] = {"primary_evidence": primary_evidence, "additional_evidence": additional_evidence}
    return body


async def _handshake(
    http: httpx.AsyncClient,
    base_url: str,
    source: EvidenceSource,
    key: TeeKeyPair,
    init_data_toml: str | None,
    timeout: float,
) -> Attestation:
    root = base_url.rstrip("/")
    reply = await _http.request(
        http, "POST", root + "/kbs/v0/auth", json_body=auth_body(source.tee), timeout=timeout
    )
    if reply.status != 200:
        raise _http.kbs_error(reply, "auth")
    challenge = Challenge.from_reply(reply.json(), reply.session_id)
    jwk = key.public_jwk()
    dev = device_report_data(challenge.hash_algorithm, challenge.nonce, jwk)
    additional = await source.additional_evidence(dev)
    if not isinstance(additional, str):
        raise ProtocolError("additional evidence must be a JSON string")
    rd = primary_report_data(challenge.hash_algorithm, challenge.nonce, jwk, additional)
    if source.tee == "se":  # as guest-components: the SE attester gets the request with the digest
        rd = se_request_with_digest(challenge.nonce, rd)
    evidence = await source.primary_evidence(rd)
    body = attestation_body(challenge.nonce, jwk, evidence, additional, init_data_toml)
    reply = await _http.request(
        http,
        "POST",
        root + "/kbs/v0/attest",
        json_body=body,
        session_id=challenge.session_id,
        timeout=timeout,
    )
    if reply.status != 200:
        raise _http.kbs_error(reply, "attest")
    doc = reply.json()
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise ProtocolError("attest answer has no token")
    return Attestation.from_token(token, key, challenge.session_id)


async def attest(
    http: httpx.AsyncClient,
    base_url: str,
    source: EvidenceSource,
    *,
    key: TeeKeyPair | None = None,
    init_data_toml: str | None = None,
    attempts: int = 5,
    retry_delay: float = 1.0,
    timeout: float = 60.0,
) -> Attestation:
    """Run RCAR against ``base_url`` (the KBS root, e.g. ``http://127.0.0.1:8080``).

    A failed handshake is retried (``attempts`` times, first ``retry_delay`` seconds
    apart, doubling up to 8x) only where a retry can heal it: timeouts, dropped connections, 5xx
    answers and malformed answers. A refused connection, a TLS verification
    failure, a malformed URL and a 4xx answer (the KBS's verdict, a protocol
    version mismatch included) fail at once. ``key`` defaults to a fresh EC P-256 key."""
    tee_key = key if key is not None else TeeKeyPair.generate()
    last: KbsClientError | None = None
    attempts = max(1, attempts)
    for n in range(attempts):
        if n:
            await asyncio.sleep(_backoff(retry_delay, n))
        try:
            return await _handshake(http, base_url, source, tee_key, init_data_toml, timeout)
        except VersionMismatch:
            raise
        except TransportError as exc:
            if not exc.retryable:
                raise
            last = exc
        except AttestationRejected as exc:
            if exc.status < 500:  # a 4xx answer is the KBS's verdict: no retry changes it
                raise
            last = exc
        except ProtocolError as exc:
            last = exc
        if n + 1 < attempts:
            pause = _backoff(retry_delay, n + 1)
            log.warning("RCAR attempt %d/%d failed, retrying in %gs: %s", n + 1, attempts, pause, last)
    assert last is not None
    if attempts > 1:
        log.warning("RCAR: giving up after %d attempts", attempts)
    raise last


def _backoff(base: float, n: int) -> float:
    """The pause before retry ``n`` (1-based): ``base`` doubled each time, at most 8x."""
    return float(base * min(2 ** (n - 1), 8))
