"""The built-in attestation service: checks one /attest request against its
session, verifies primary and additional evidence with the per-TEE
verifiers, appraises each device with the EAR policy of its class, and
issues the EAR token (reference §2.3, §3, §4)."""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from attestation.errors import AttestationError
from attestation.initdata import InitDataError, parse_initdata
from coco_common.strict_json import strict_loads, strict_object
from kbs_protocol import jwe as wire_jwe
from kbs_protocol.errors import JweError, TeeKeyError
from kbs_protocol.jcs import hash_canonical
from kbs_protocol.jwe import ALG_ECDH_ES_A256KW, ALG_RSA1_5, ALG_RSA_OAEP_256, TeePubKey

from .annotated import AnnotationError, annotate
from .bounds import BoundsError, check_shape, elide_long_strings
from .config import SecurityConfig
from .ear import Appraisal, EarBroker
from .errors import KbsAttestationError, KbsError
from .policy import AttestationPolicies
from .rvps import ReferenceValues
from .verifiers import DEV_TEES, DEVICE_TEES, TEE_CLASS, UnsupportedTee, VerifierRegistry

if TYPE_CHECKING:
    from .grpc_api import RemoteReferenceValues

__all__ = [
    "ATTEST_FAILED",
    "MAX_ADDITIONAL_EVIDENCE",
    "AttestationService",
    "EvidenceRejected",
    "additional_evidence",
    "annotate_submod",
    "init_data_answer",
    "init_data_claims",
    "parse_attestation",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_ADDITIONAL_EVIDENCE = 8 * 1024 * 1024
#: base64url length of a 16384-bit modulus, the largest RSA tee-pubkey accepted
_MAX_RSA_N_B64 = (16384 // 8 * 4 + 2) // 3
ATTEST_FAILED = "Attestation error: RCAR handshake Attest failed"
#: an /attest body up to this size is parsed and its token signed on the event loop (a fraction of
#: a millisecond, less than the hand-over to a thread costs); a larger one in a thread, so the loop
#: keeps its turn while megabytes of JSON and TOML are read (the GIL is handed over every few ms)
INLINE_BODY_BYTES = 16 * 1024


class EvidenceRejected(KbsAttestationError):
    """Why an /attest (or a separate AS's evaluation) failed. The reason is what ``str()``
    gives (for the log); the client sees only :data:`ATTEST_FAILED`, wherever this ends up."""

    variant = "AttestationError"

    def __init__(self, reason: str) -> None:
        super().__init__(ATTEST_FAILED)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _only(
    obj: Any, allowed: set[str], required: set[str], what: str, *, strict: bool = True
) -> dict[str, Any]:
    """``obj`` as an object of ``allowed`` members with every ``required`` one; other members are
    an error, or (``strict`` false, trustee's serde) dropped."""
    if not isinstance(obj, dict):
        raise EvidenceRejected(f"{what} is not an object")
    extra = set(obj) - allowed
    if extra and strict:
        raise EvidenceRejected(f"{what} has unknown fields {sorted(extra)}")
    missing = required - set(obj)
    if missing:
        raise EvidenceRejected(f"{what} lacks {sorted(missing)}")
    return {k: v for k, v in obj.items() if k in allowed}


def _shape(doc: Any, limits: SecurityConfig, what: str, *, depth_slack: int = 0) -> None:
    try:
        check_shape(
            doc, max_depth=limits.max_claims_depth + depth_slack, max_items=limits.max_claims_items, what=what
        )
    except BoundsError as exc:
        raise EvidenceRejected(str(exc)) from exc


def parse_attestation(
    untrusted_body: bytes,
    limits: SecurityConfig | None = None,
    *,
    strict: bool = True,
    session_nonce: str | None = None,
) -> tuple[dict[str, Any] | None, str, TeePubKey, Any, str]:
    """-> (init_data, nonce, tee_pubkey, primary_evidence, additional_evidence), every part
    within ``limits`` (size, depth, element count) before anything else reads it. ``strict``
    false ignores members the protocol does not define, as trustee does; ``session_nonce``:
    the runtime data must carry it."""
    lim = limits or SecurityConfig()
    if len(untrusted_body) > lim.max_evidence_bytes + 4 * lim.max_init_data_bytes + 64 * 1024:
        raise EvidenceRejected("attestation body is larger than the evidence and init-data limits allow")
    try:
        doc = strict_loads(untrusted_body)
    except ValueError as exc:
        raise EvidenceRejected(f"attestation body is not strict JSON: {exc}") from exc
    _shape(doc, lim, "attestation body", depth_slack=3)
    doc = _only(
        doc,
        {"init-data", "runtime-data", "tee-evidence"},
        {"runtime-data", "tee-evidence"},
        "body",
        strict=strict,
    )
    rt = _only(
        doc["runtime-data"], {"nonce", "tee-pubkey"}, {"nonce", "tee-pubkey"}, "runtime-data", strict=strict
    )
    ev = _only(
        doc["tee-evidence"],
        {"primary_evidence", "additional_evidence"},
        {"primary_evidence", "additional_evidence"},
        "tee-evidence",
        strict=strict,
    )
    if not isinstance(rt["nonce"], str):
        raise EvidenceRejected("nonce is not a string")
    if session_nonce is not None and rt["nonce"] != session_nonce:
        raise EvidenceRejected("runtime-data nonce differs from the session nonce")
    try:
        key = TeePubKey.from_json(rt["tee-pubkey"])
    except TeeKeyError as exc:
        raise EvidenceRejected(f"tee-pubkey: {exc}") from exc
    usable_tee_key(key)
    add = ev["additional_evidence"]
    if not isinstance(add, str) or len(add) > MAX_ADDITIONAL_EVIDENCE:
        raise EvidenceRejected("additional_evidence must be a string")
    primary = ev["primary_evidence"]
    if len(add.encode("utf-8")) + len(json.dumps(primary)) > lim.max_evidence_bytes:
        raise EvidenceRejected(f"evidence is larger than {lim.max_evidence_bytes} bytes")
    init = doc.get("init-data")
    if init is not None:
        init = _only(init, {"format", "body"}, {"format", "body"}, "init-data", strict=strict)
        if init["format"] != "toml":
            raise EvidenceRejected("Unsupported initdata format")
        if not isinstance(init["body"], str):
            raise EvidenceRejected("init-data body is not a string")
        if len(init["body"].encode("utf-8")) > lim.max_init_data_bytes:
            raise EvidenceRejected(f"init-data is larger than {lim.max_init_data_bytes} bytes")
    return init, rt["nonce"], key, primary, add


def additional_evidence(untrusted: str) -> dict[str, Any]:
    """The ``additional_evidence`` string as the map of device TEE name -> evidence it must be."""
    return strict_object(untrusted, error=EvidenceRejected, what="additional evidence")


#: tee-pubkeys that passed :func:`usable_tee_key` lately (clients re-attest with one key)
_USABLE_KEYS: OrderedDict[TeePubKey, None] = OrderedDict()
_USABLE_KEYS_MAX = 1024


def usable_tee_key(key: TeePubKey) -> None:
    """Refuse a tee-pubkey the KBS could never encrypt a resource to (unsupported curve or
    algorithm, a point off its curve, a weak, malformed or oversized RSA key): found at
    /attest, not at the first resource GET. Whether a key is usable depends on the key alone,
    so one that passed is remembered (an LRU of :data:`_USABLE_KEYS_MAX`)."""
    if key in _USABLE_KEYS:
        _USABLE_KEYS.move_to_end(key)
        return
    if key.kty == "RSA" and key.n is not None and len(key.n) > _MAX_RSA_N_B64:
        raise EvidenceRejected("RSA tee-pubkey is longer than 16384 bits")
    if (key.kty, key.alg) not in (("EC", ALG_ECDH_ES_A256KW), ("RSA", ALG_RSA_OAEP_256), ("RSA", ALG_RSA1_5)):
        raise EvidenceRejected("tee-pubkey algorithm is not supported")
    try:
        wire_jwe.encrypt(b"probe", key)  # exactly what a resource GET will do with it
    except JweError as exc:
        raise EvidenceRejected(f"tee-pubkey is not usable: {exc}") from exc
    except ValueError as exc:  # cryptography refuses some RSA numbers late (even modulus, size)
        raise EvidenceRejected("tee-pubkey is not a usable RSA key") from exc
    _USABLE_KEYS[key] = None
    while len(_USABLE_KEYS) > _USABLE_KEYS_MAX:
        _USABLE_KEYS.popitem(last=False)


def init_data_claims(init: Mapping[str, Any], limits: SecurityConfig) -> tuple[bytes, dict[str, Any]]:
    """(digest of the exact TOML bytes, claims) for a checked initdata document. Long strings
    in the claims are elided to a digest: init-data is unsigned input, copied into the token."""
    try:
        data = parse_initdata(str(init["body"]).encode("utf-8"))
    except InitDataError as exc:
        raise EvidenceRejected(f"init-data rejected: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # tomllib: nesting, integers over the digit limit
        raise EvidenceRejected("init-data is not TOML this KBS reads") from exc
    claims: dict[str, Any] = {}
    for k, v in data.data.items():
        if k in ("aa.toml", "cdh.toml"):
            try:
                claims[k] = tomllib.loads(v)
                continue
            except (ValueError, RecursionError):  # not TOML (or too deep / huge ints): kept as text
                pass
        claims[k] = v
    _agent_policy_claims(claims)
    _shape(claims, limits, "init-data claims")
    return data.digest(), elide_long_strings(claims)


def init_data_answer(untrusted_toml: str, limits: SecurityConfig) -> list[Any]:
    """:func:`init_data_claims` as a policy worker runs it (JSON out): ``["ok", digest hex, claims]``
    or ``["reject", reason]``. The largest documents the limits allow cost tomllib tens of ms
    of CPU that would hold the server's GIL: they are parsed there."""
    try:
        digest, claims = init_data_claims({"body": untrusted_toml}, limits)
    except EvidenceRejected as exc:
        return ["reject", str(exc)]
    return ["ok", digest.hex(), claims]


def _agent_policy_claims(claims: dict[str, Any]) -> None:
    """As trustee's AS: a ``policy.rego`` entry whose text ends with ``policy_data := {...}``
    (JSON) is replaced by ``agent_policy_claims`` holding that object; otherwise left as is."""
    rego = claims.get("policy.rego")
    if not isinstance(rego, str):
        return
    i = rego.find("policy_data := {")
    if i < 0:
        return
    try:
        data = strict_loads(rego[i + len("policy_data := ") :])
    except ValueError:  # not JSON (or JSON with a repeated key): left as the policy text
        return
    del claims["policy.rego"]
    claims["agent_policy_claims"] = data


def annotate_submod(
    tee: str, claims: Mapping[str, Any], init_claims: Any, runtime_claims: Any
) -> dict[str, Any]:
    try:
        return annotate(tee, claims, init_data_claims=init_claims, runtime_data_claims=runtime_claims)
    except AnnotationError as exc:
        raise EvidenceRejected(str(exc)) from exc


async def _inline(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``asyncio.to_thread``'s signature, run here: for work known to be small."""
    return fn(*args, **kwargs)


class AttestationService:
    def __init__(
        self,
        registry: VerifierRegistry,
        broker: EarBroker,
        policies: AttestationPolicies,
        rvps: ReferenceValues | RemoteReferenceValues,
        *,
        verbose_token: bool = True,
        limits: SecurityConfig | None = None,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.policies = policies
        self.rvps = rvps
        self.verbose = verbose_token
        self.limits = limits or SecurityConfig()
        #: ``[compatibility] strict_request_bodies``: false ignores unknown /attest members
        self.strict_bodies = True

    async def _verify(
        self, tee: str, evidence: Any, report_data: bytes, init_hash: bytes | None, now: datetime
    ) -> dict[str, Any]:
        try:
            v = self.registry.get(tee)
        except UnsupportedTee as exc:
            raise EvidenceRejected(str(exc)) from exc
        # off the event loop: verifiers may fetch collateral with blocking I/O and are CPU-bound;
        # the development verifiers compare a few bounded fields (no I/O, no crypto): inline
        run = _inline if tee in DEV_TEES else asyncio.to_thread
        try:
            claims = await run(
                v.verify,
                evidence,
                expected_report_data=report_data,
                expected_init_data_hash=init_hash,
                now=now,
            )
        except AttestationError as exc:
            raise EvidenceRejected(f"{tee} evidence rejected: {exc}") from exc
        if not isinstance(claims, dict):
            raise EvidenceRejected(f"{tee} verifier returned no claims")
        _shape(claims, self.limits, f"{tee} claims")
        # a verifier's claims may repeat unsigned evidence (the sample svn): bounded in the token
        return dict(elide_long_strings(claims))

    async def attest(
        self,
        *,
        tee: str,
        session_nonce: str,
        hash_algorithm: str,
        untrusted_body: bytes,
        now: datetime | None = None,
    ) -> str:
        """Verify one /attest body for a session; returns the EAR token or raises
        :class:`kbs.errors.KbsAttestationError` (details only in the log)."""
        t = now if now is not None else datetime.now(UTC)
        try:
            return await self._attest(tee, session_nonce, hash_algorithm, untrusted_body, t)
        except EvidenceRejected as exc:
            log.warning("attestation rejected: %s", exc)
            raise KbsAttestationError(ATTEST_FAILED) from exc
        except KbsError as exc:
            log.warning("attestation failed: %s: %s", exc.variant, exc.detail)
            raise KbsAttestationError(ATTEST_FAILED) from exc
        except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
            # hostile input this code did not foresee: a refusal, never a 500 (details in the log)
            log.warning("attestation failed on unexpected input: %s", type(exc).__name__)
            raise KbsAttestationError(ATTEST_FAILED) from exc

    async def _attest(self, tee: str, session_nonce: str, alg: str, body: bytes, now: datetime) -> str:
        if tee in DEVICE_TEES:
            raise EvidenceRejected(f"{tee} is a device TEE, not a primary TEE")
        run = _inline if len(body) <= INLINE_BODY_BYTES else asyncio.to_thread
        init, nonce, key, primary, additional = await run(
            parse_attestation, body, self.limits, strict=self.strict_bodies, session_nonce=session_nonce
        )
        jwk = key.to_jwk()
        runtime_claims: dict[str, Any] = {"nonce": nonce, "tee-pubkey": jwk}
        if self.verbose:  # unsigned input: verbatim only up to MAX_CLAIM_STRING
            runtime_claims["additional-evidence"] = elide_long_strings(additional)
        primary_rd = hash_canonical(
            alg, {"additional-evidence": additional, "nonce": nonce, "tee-pubkey": jwk}
        )
        init_hash: bytes | None = None
        init_claims: dict[str, Any] | None = None
        if init is not None and run is _inline:
            init_hash, init_claims = init_data_claims(init, self.limits)
        elif init is not None:  # in a worker process: the parse holds the GIL for tens of ms
            answer = await self.policies.workers.init_data(str(init["body"]), self.limits)
            if answer[0] != "ok":
                raise EvidenceRejected(str(answer[1]))
            init_hash, init_claims = bytes.fromhex(answer[1]), answer[2]

        devices: list[tuple[str, str, dict[str, Any]]] = []  # (class, tee, claims)
        if additional:
            device_rd = hash_canonical(alg, {"nonce": nonce, "tee-pubkey": jwk})
            amap = await run(additional_evidence, additional)
            _shape(amap, self.limits, "additional evidence", depth_slack=1)
            for dtee, dev in amap.items():
                claims = await self._verify(dtee, dev, device_rd, None, now)
                cls = TEE_CLASS.get(dtee, "gpu")
                if dtee == "nvidia" and isinstance(claims.get("devices"), list):
                    for d in claims["devices"]:
                        arch = d.get("arch") if isinstance(d, dict) else None
                        devices.append(("switch" if arch == "LS10" else "gpu", dtee, d))
                else:
                    devices.append((cls, dtee, claims))

        cpu_claims = await self._verify(tee, primary, primary_rd, init_hash, now)
        rv = await self.rvps.all()
        submods: dict[str, Appraisal] = {}
        annotated = annotate_submod(tee, cpu_claims, init_claims, runtime_claims)
        submods["cpu0"] = await self._appraise("cpu", annotated, rv)
        counters: dict[str, int] = {}
        for cls, dtee, claims in devices:
            idx = counters.get(cls, 0)
            counters[cls] = idx + 1
            dev_annot = annotate_submod(dtee, claims, None, {"nonce": nonce, "tee-pubkey": jwk})
            submods[f"{cls}{idx}"] = await self._appraise(cls, dev_annot, rv)
        token = await run(self.broker.issue, submods, now=now.timestamp())
        if len(token) > self.limits.max_token_bytes:
            raise EvidenceRejected(f"the token would be larger than {self.limits.max_token_bytes} bytes")
        return token

    async def _appraise(self, cls: str, annotated: dict[str, Any], rv: Mapping[str, Any]) -> Appraisal:
        res = await self.policies.appraise(cls, annotated, rv)
        return Appraisal(res.trust_vector, annotated, policy_id=res.policy_id, extensions=res.extensions)
