"""The KBS HTTP API on aiohttp (reference §1, §2, §5, §6): status codes and
RFC 7807 bodies as trustee, the ``kbs-session-id`` cookie, passport mode,
admin endpoints, ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web

from attestation.errors import AttestationError
from coco_common.strict_json import strict_loads
from kbs_client import jwe as client_jwe
from kbs_client._b64 import unb64url
from kbs_client.errors import JweError

from .admin_auth import AdminAuthorizer
from .attestation_service import AttestationService
from .config import KbsServerConfig, startup_problems
from .ear import EarBroker, TokenVerifier, extract_tee_pubkey
from .errors import (
    AdminAccessDenied,
    AdminAuthAccess,
    AdminAuthInitialization,
    KbsAttestationError,
    KbsConfigError,
    KbsError,
    KbsJweError,
    ParsePolicyError,
    PluginInternalError,
    PluginNotFound,
    PolicyDeny,
    RvpsError,
    TokenNotFound,
)
from .external_plugin import ClientPlugin, ExternalPlugin, PluginCall
from .grpc_api import AsClient, RemoteAttestationService, RemoteReferenceValues, RvpsClient
from .intel_ta import IntelTrustAuthority, ItaReferenceValues
from .metrics import Metrics
from .policy import RESOURCE_POLICY_ID, AttestationPolicies, ResourcePolicy
from .policy_worker import PolicyWorkers
from .rvps import ReferenceValues
from .sessions import Session, SessionStore
from .storage import (
    NS_REPOSITORY,
    EncryptedStore,
    KvStore,
    LocalFsStore,
    LocalJsonStore,
    MemoryStore,
    PostgresStore,
    RedisStore,
    load_at_rest_key,
)
from .verifiers import DEV_TEES, DEVICE_TEES, KNOWN_TEES, UnsupportedTee, VerifierRegistry, auth_extra_params

__all__ = ["KbsState", "build_state", "make_app", "serve", "ssl_context"]

log = logging.getLogger("kbs")

PROTOCOL_VERSION = "0.4.0"
MAX_HEADER_BYTES = 128 * 1024
SESSION_COOKIE = "kbs-session-id"
AUTH_DESERIALIZE = "Attestation error: RCAR handshake Auth failed: deserialize Request"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def _audit_fields(request: web.Request, segs: list[str], claims: Any) -> dict[str, Any]:
    """What an audit line names: resource, TEE, a digest of the claims, the client (no value)."""
    tees: list[str] = []
    sub = claims.get("submods") if isinstance(claims, dict) else None
    if isinstance(sub, dict):
        for mod in sub.values():
            ev = mod.get("ear.veraison.annotated-evidence") if isinstance(mod, dict) else None
            if isinstance(ev, dict):
                tees += [k for k in ev if k not in ("runtime_data_claims", "report_data", "init_data",
                                                    "init_data_claims")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "resource": "/".join(x[:64] for x in segs[:3]),
        "tee": ",".join(tees[:8]),
        "claims_sha256": digest,
        "client": request.remote,
    }


@dataclass
class KbsState:
    config: KbsServerConfig
    store: KvStore
    sessions: SessionStore
    admin: AdminAuthorizer
    tokens: TokenVerifier
    service: AttestationService | RemoteAttestationService | IntelTrustAuthority
    resource_policy: ResourcePolicy
    rvps: ReferenceValues | RemoteReferenceValues | ItaReferenceValues
    metrics: Metrics = field(default_factory=Metrics)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: trustee's client plugins served through the generic plugin flow (``external``, ``pkcs11``)
    client_plugins: dict[str, ClientPlugin] = field(default_factory=dict)


def _make_store(kind: str, cfg: KbsServerConfig, cache: dict[str, KvStore]) -> KvStore:
    if kind in cache:
        return cache[kind]
    st: KvStore
    if kind == "Memory":
        st = MemoryStore()
    elif kind == "LocalFs":
        st = LocalFsStore(cfg.storage.local_fs_dir)
    elif kind == "LocalJson":
        st = LocalJsonStore(cfg.storage.local_json_dir)
    elif kind == "Redis":
        st = RedisStore(cfg.storage.redis_url)
    elif kind == "Postgres":
        pg = cfg.storage.postgres
        st = PostgresStore.from_config(pg.db, pg.username, pg.password, pg.host, pg.port)
    else:
        raise KbsConfigError(f"storage type {kind} not supported")
    cache[kind] = st
    return st


async def build_state(
    cfg: KbsServerConfig, *, registry: VerifierRegistry | None = None, broker: EarBroker | None = None
) -> KbsState:
    """Everything the HTTP layer needs, built from a parsed config."""
    problems = startup_problems(cfg)
    if problems:
        raise KbsConfigError("; ".join(problems))
    cache: dict[str, KvStore] = {}
    base = _make_store(cfg.storage.storage_type, cfg, cache)
    store: KvStore = base
    if cfg.storage.encryption_key_path:
        store = EncryptedStore(
            base, load_at_rest_key(cfg.storage.encryption_key_path), frozenset({NS_REPOSITORY})
        )
    sess_store = _make_store(cfg.storage.session_storage_type or cfg.storage.storage_type, cfg, cache)
    for st in cache.values():
        if isinstance(st, RedisStore | PostgresStore):
            try:
                await st.ping()
            except KbsError as exc:
                where = "Redis" if isinstance(st, RedisStore) else "PostgreSQL"
                raise KbsConfigError(f"the {where} storage backend is not reachable") from exc
    a = cfg.attestation_service
    if broker is None:
        kw: dict[str, Any] = {
            "duration_min": a.duration_min,
            "issuer": a.issuer_name,
            "developer": a.developer_name,
            "build": a.build_name,
            "profile": a.profile_name,
        }
        broker = (
            EarBroker.from_files(a.signer_key_path, a.signer_cert_path, **kw)
            if a.signer_key_path
            else EarBroker(**kw)
        )
    t = cfg.attestation_token
    # the built-in AS's own signing key is always trusted, besides [attestation_token]'s certs and
    # JWK sets: the secure setup needs no configuration, and insecure_header_jwk stays an opt-in
    # off the event loop: a JWK set may be fetched over HTTPS (trustee's ITA configs)
    tokens = await asyncio.to_thread(
        TokenVerifier.from_config,
        t.trusted_certs_paths,
        t.trusted_jwk_sets,
        t.insecure_header_jwk,
        own_keys=[broker.key.public_key()] if cfg.compatibility.trust_own_signer else [],
    )
    if t.insecure_header_jwk:
        log.warning(
            "INSECURE: [attestation_token] insecure_header_jwk = true: a resource request is granted to ANY "
            "token signed by the key in its own jwk header, whoever made it; for tests only. Without it "
            "this KBS trusts its own attestation service's tokens and trusted_certs_paths / trusted_jwk_sets"
        )
    sess_kind = cfg.storage.session_storage_type or cfg.storage.storage_type
    if not a.signer_key_path and sess_kind in ("Redis", "Postgres"):
        log.warning(
            "the EAR signing key is ephemeral (no [attestation_service.attestation_token_broker.signer] "
            "key_path): tokens issued by this replica are refused by other replicas sharing the "
            "session store; give every replica the same signer key_path"
        )
    closers: list[Callable[[], Awaitable[None]]] = [st.close for st in cache.values()]
    sec = cfg.security
    workers = PolicyWorkers(sec.policy_workers, timeout_s=sec.policy_timeout_s)
    closers.append(workers.close)
    rvps: ReferenceValues | RemoteReferenceValues | ItaReferenceValues
    service: AttestationService | RemoteAttestationService | IntelTrustAuthority
    if a.type == "intel_ta":  # Intel Trust Authority (a cloud service) appraises the evidence
        ita = await asyncio.to_thread(IntelTrustAuthority, a)
        closers.append(ita.close)
        service, rvps = ita, ita.rvps
    elif a.type == "coco_as_grpc":  # a separate attestation service (and the RVPS behind it)
        as_client = AsClient(a.as_addr or "http://127.0.0.1:50004")
        rv_client = RvpsClient(a.as_addr or "http://127.0.0.1:50004")
        closers += [as_client.close, rv_client.close]
        rvps = RemoteReferenceValues(rv_client, store)
        service = RemoteAttestationService(as_client)
    else:
        if a.rvps_type == "GrpcRemote":  # built-in attestation service, separate RVPS
            rv_client = RvpsClient(a.rvps_address or "http://127.0.0.1:50003")
            closers.append(rv_client.close)
            rvps = RemoteReferenceValues(rv_client, store)
        else:
            rvps = ReferenceValues(store, hide_expired=cfg.compatibility.hide_expired_reference_values)
        dev = sec.dev_verifiers
        if dev is None:  # unset: on only where tokens are forgeable anyway (insecure_header_jwk)
            dev = tuple(sorted(DEV_TEES)) if t.insecure_header_jwk else ()
        if dev:
            log.warning(
                "INSECURE: the unsigned development verifiers %s are enabled ([security] dev_verifiers%s): "
                "a client with no TEE at all can attest as them; the default resource policy refuses them, "
                "a custom one must too. For tests and demos only",
                ", ".join(dev),
                "" if sec.dev_verifiers is not None else " unset, implied by insecure_header_jwk",
            )
        policies = AttestationPolicies(store, workers)
        policies.check_at_upload = cfg.compatibility.check_policy_at_upload
        service = AttestationService(
            registry or VerifierRegistry(options=a.verifier_config, dev_verifiers=dev),
            broker,
            policies,
            rvps,
            verbose_token=a.verbose_token,
            limits=sec,
        )
        service.strict_bodies = cfg.compatibility.strict_request_bodies
    rp = ResourcePolicy(store, workers)
    rp.check_at_upload = cfg.compatibility.check_policy_at_upload
    await rp.install_default()
    client_plugins: dict[str, ClientPlugin] = {}
    for pc in cfg.plugin_configs:
        if pc.name == "external":
            client_plugins["external"] = ExternalPlugin(pc.options)
        elif pc.name == "pkcs11":
            from .pkcs11_plugin import Pkcs11Plugin

            client_plugins["pkcs11"] = await Pkcs11Plugin.open(pc.options)
        elif pc.name == "nebula-ca":
            from .nebula_ca_plugin import NebulaCaPlugin

            client_plugins["nebula-ca"] = await asyncio.to_thread(NebulaCaPlugin.open, pc.options)
    closers += [p.close for p in client_plugins.values()]
    state = KbsState(
        config=cfg,
        store=store,
        sessions=SessionStore(sess_store, timeout_min=a.timeout_min, max_sessions=sec.max_sessions),
        admin=AdminAuthorizer(cfg.admin, base_dir=cfg.base_dir),
        tokens=tokens,
        service=service,
        resource_policy=rp,
        rvps=rvps,
        closers=closers,
        client_plugins=client_plugins,
    )
    m = state.metrics
    m.counter("kbs_http_requests_total", "HTTP requests by endpoint, method and status")
    m.counter("kbs_attestations_total", "RCAR /attest outcomes")
    m.counter("kbs_sessions_created_total", "RCAR sessions created by /auth")
    m.counter("kbs_resource_requests_total", "resource GET outcomes")
    m.gauge("process_resident_memory_bytes", "resident set size", _rss)
    return state


def _rss() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


class _InternalError(KbsError):
    """An unexpected failure inside the KBS (status 500; the detail never says more)."""

    status = 500
    variant = "PluginInternalError"


def _error(exc: KbsError, *, trustee_texts: bool = False) -> web.Response:
    body = exc.body(trustee_texts=trustee_texts)
    return web.Response(status=exc.status, body=body, content_type="application/json")


def _set_cookie(resp: web.StreamResponse, s: Session) -> None:
    resp.headers.add(
        "Set-Cookie", f"{SESSION_COOKIE}={s.id}; Expires={formatdate(s.expires_at, usegmt=True)}"
    )


def _json(doc: Any) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), content_type="application/json")


class _Handlers:
    def __init__(self, state: KbsState) -> None:
        self.s = state

    # --- RCAR ---------------------------------------------------------------------------------
    async def auth(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            doc = strict_loads(raw)
        except ValueError as exc:
            raise KbsAttestationError(AUTH_DESERIALIZE) from exc
        fields = {"version", "tee", "extra-params"}
        if not isinstance(doc, dict) or not fields <= set(doc):
            raise KbsAttestationError(AUTH_DESERIALIZE)
        if set(doc) != fields and self.s.config.compatibility.strict_request_bodies:
            raise KbsAttestationError(AUTH_DESERIALIZE)
        version, tee = doc["version"], doc["tee"]
        if not isinstance(version, str) or not isinstance(tee, str):
            raise KbsAttestationError(AUTH_DESERIALIZE)
        # semver "=0.4.0": build metadata is ignored, a pre-release does not match
        if not _SEMVER.match(version) or version.split("+", 1)[0] != PROTOCOL_VERSION:
            raise KbsAttestationError(
                "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: "
                f"expect ={PROTOCOL_VERSION} while the request is {version[:40]}"
            )
        if tee not in KNOWN_TEES:
            raise KbsAttestationError(AUTH_DESERIALIZE)
        if tee in DEVICE_TEES:
            # a device TEE attests an accelerator, not the CPU the workload runs on
            raise KbsAttestationError(
                f"Attestation error: RCAR handshake Auth failed: {tee} is a device TEE, not a primary TEE"
            )
        if isinstance(self.s.service, AttestationService) and self.s.service.registry.disabled(tee):
            raise KbsAttestationError(
                f"Attestation error: RCAR handshake Auth failed: tee {tee} is not enabled"
            )
        alg = "sha512" if tee == "se" else "sha384"
        nonce: str | None = None
        try:  # se: the verifier's attestation request is the nonce (trustee's supplemental challenge)
            extra: Any = auth_extra_params(tee, doc["extra-params"])
            if isinstance(self.s.service, AttestationService):  # a remote AS or ITA: a random nonce
                nonce = await asyncio.to_thread(
                    self.s.service.registry.supplemental_challenge, tee, doc["extra-params"]
                )
        except (UnsupportedTee, AttestationError) as exc:
            raise KbsAttestationError(f"Attestation error: RCAR handshake Auth failed: {exc}") from exc
        if isinstance(self.s.service, IntelTrustAuthority):  # trustee's ITA backend picks the hash
            alg, extra = self.s.service.select_hash_algorithm(tee, doc["extra-params"])
        sess = await self.s.sessions.create(tee, hash_algorithm=alg, nonce=nonce)
        self.s.metrics.inc("kbs_sessions_created_total", tee=tee)
        resp = _json({"nonce": sess.nonce, "extra-params": extra})
        _set_cookie(resp, sess)
        return resp

    async def attest(self, request: web.Request) -> web.Response:
        raw = await request.read()
        sess = await self.s.sessions.get(request.cookies.get(SESSION_COOKIE))
        if sess is None:
            self.s.metrics.inc("kbs_attestations_total", result="no_session")
            raise KbsAttestationError("Attestation error: RCAR handshake Attest failed")
        async with self.s.sessions.lock(sess.id):  # one nonce, one attestation
            fresh = await self.s.sessions.get(sess.id)
            if fresh is None:
                raise KbsAttestationError("Attestation error: RCAR handshake Attest failed")
            sess = fresh
            if sess.token is None:
                try:
                    token = await self.s.service.attest(
                        tee=sess.tee,
                        session_nonce=sess.nonce,
                        hash_algorithm=sess.hash_algorithm,
                        untrusted_body=raw,
                    )
                except KbsAttestationError:
                    self.s.metrics.inc("kbs_attestations_total", result="rejected")
                    raise
                sess = await self.s.sessions.mark_attested(sess, token)
                self.s.metrics.inc("kbs_attestations_total", result="ok")
        resp = _json({"token": sess.token})
        _set_cookie(resp, sess)
        return resp

    # --- resources ----------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> str:
        sess = await self.s.sessions.get(request.cookies.get(SESSION_COOKIE))
        if sess is not None and sess.token is not None:
            return sess.token
        authz = request.headers.get("Authorization", "")
        if authz.startswith("Bearer ") and authz[7:].strip():
            return authz[7:].strip()
        raise TokenNotFound("Attestation Token not found")

    @staticmethod
    def acl_path(request: web.Request) -> str:
        """What an admin ACL regex is matched against: the decoded path the router dispatched,
        without the query. Trustee matches the raw request URI (query included); there a
        percent-encoded path (``%70rod``, ``prod%2Fkey``) reaches the same handler as the plain
        one yet slips past an exclusion-style ACL. Here both see one string."""
        return "/kbs/v0/" + request.match_info.get("tail", "")

    def _admin(self, request: web.Request, err: type[KbsError]) -> None:
        try:
            role = self.s.admin.check(self.acl_path(request), request.headers.get("Authorization"))
        except AdminAccessDenied as exc:
            log.warning("admin access denied", extra={"path": request.path, "reason": str(exc)})
            if err is AdminAuthInitialization:
                raise err(f"failed to initialize [admin] configuration: Admin access denied: {exc}") from exc
            raise err(f"Admin access denied: {exc}") from exc
        log.info("admin request", extra={"path": request.path, "method": request.method, "role": role})

    @staticmethod
    def _resource_key(segs: list[str]) -> str:
        if len(segs) != 3 or not all(_SEGMENT.match(x) for x in segs):
            raise PluginInternalError("Plugin internal error: invalid resource path")
        return "/".join(segs)

    async def resource(self, request: web.Request, segs: list[str]) -> web.Response:
        if request.method == "GET":
            try:
                return await self._get_resource(request, segs)
            except KbsError as exc:
                self.s.metrics.inc("kbs_resource_requests_total", result=exc.variant)
                raise
        if request.method == "PUT":
            # trustee: only POST and DELETE are admin calls; PUT goes through the token and the
            # resource policy like a GET, and the resource plugin then refuses the method
            claims = self.s.tokens.verify(await self._token(request))
            if not await self.s.resource_policy.allows(claims, segs, dict(request.query.items())):
                raise PolicyDeny("Access denied by policy")
            raise PluginInternalError(
                "Plugin internal error: Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`"
            )
        if request.method == "POST":
            self._admin(request, AdminAuthInitialization)
            key = self._resource_key(segs)
            data = await request.read()
            await self.s.store.set(NS_REPOSITORY, key, data)
            log.info("resource stored", extra={"resource": key, "bytes": len(data)})
            return web.Response(status=200, content_type="text/xml")
        if request.method == "DELETE":
            self._admin(request, AdminAuthInitialization)
            key = self._resource_key(segs)
            if not await self.s.store.delete(NS_REPOSITORY, key):
                raise PluginInternalError("Plugin internal error: resource not found")
            log.info("resource deleted", extra={"resource": key})
            return web.Response(status=200)
        raise PluginInternalError("Plugin internal error: method not supported")

    async def _get_resource(self, request: web.Request, segs: list[str]) -> web.Response:
        token = await self._token(request)
        claims = self.s.tokens.verify(token)
        query = {k: v for k, v in request.query.items()}
        audit = _audit_fields(request, segs, claims)
        if not await self.s.resource_policy.allows(claims, segs, query):
            log.info("resource refused by the resource policy", extra=audit)
            raise PolicyDeny("Access denied by policy")
        key = self._resource_key(segs)
        data = await self.s.store.get(NS_REPOSITORY, key)
        if data is None:
            log.info("resource not found", extra=audit)  # the wire answer stays trustee's
            raise PluginInternalError("Plugin internal error")
        tee_key = extract_tee_pubkey(claims, self.s.config.attestation_token.extra_teekey_paths)
        try:
            doc = client_jwe.encrypt(data, tee_key)
        except JweError as exc:
            raise KbsJweError(f"JWE error: {exc}") from exc
        except ValueError as exc:  # a key cryptography refuses late (tokens from other issuers)
            raise KbsJweError("JWE error: the tee-pubkey cannot be encrypted to") from exc
        self.s.metrics.inc("kbs_resource_requests_total", result="ok")
        log.info("resource released", extra={**audit, "bytes": len(data)})
        return _json(doc)

    # --- admin --------------------------------------------------------------------------------
    async def resource_policy(self, request: web.Request) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "GET":
            return _json(await self.s.resource_policy.list_ids())
        await self.s.resource_policy.set(_resource_policy_body(await request.read()))
        log.info("resource policy set")
        return web.Response(status=200)

    async def attestation_policy(self, request: web.Request) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "GET":
            return _json(await self.s.service.policies.list_ids())
        pid, policy = _attestation_policy_body(await request.read())
        await self.s.service.policies.set(pid, policy)
        log.info("attestation policy set", extra={"policy_id": pid})
        return web.Response(status=200)

    async def policy_text(self, request: web.Request, kind: str, policy_id: str) -> web.Response:
        """GET /kbs/v0/{resource,attestation}-policy/{id}: the stored policy, as uploaded
        (``{"policy_id", "policy": base64url}``); an extension, trustee lists ids only."""
        self._admin(request, AdminAuthAccess)
        if kind == "resource-policy":
            text = await self.s.resource_policy.text() if policy_id == RESOURCE_POLICY_ID else None
        else:
            policies = self.s.service.policies
            if not isinstance(policies, AttestationPolicies):  # a remote or external AS holds them
                raise PluginNotFound("attestation-policy read-back needs the built-in attestation service")
            text = await policies.text(policy_id)
        if text is None:
            raise PluginNotFound(f"{kind} {policy_id[:64]} not found")
        return _json({"policy_id": policy_id, "policy": base64.urlsafe_b64encode(text).decode().rstrip("=")})

    async def reference_value(self, request: web.Request, rest: list[str]) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "POST":  # trustee registers whatever follows reference-value/
            names = await self.s.rvps.register(await request.read())
            log.info("reference values registered", extra={"names": names})
            return web.Response(status=200, content_type="application/json")
        if request.method == "GET" and rest:
            v = await self.s.rvps.get("/".join(rest))
            if v is None:
                raise RvpsError("RVPS error: reference value not found")
            return _json(v)
        if request.method == "GET":
            raise RvpsError("RVPS error: no reference value id")
        raise PluginNotFound("Plugin reference-value not found")

    async def client_plugin(self, request: web.Request, name: str, rest: list[str]) -> web.Response:
        """trustee's generic plugin flow: the plugin says whether the call is an admin one;
        otherwise the attestation token and the resource policy (``data.plugin`` = the plugin's
        name) decide, and the plugin says whether the answer is JWE-sealed to the TEE key."""
        plugin = self.s.client_plugins[name]
        call = PluginCall(await request.read(), dict(request.query.items()), rest, request.method)
        if await plugin.validate_auth(call):
            self._admin(request, AdminAuthInitialization)
            return web.Response(status=200, body=await plugin.handle(call), content_type="text/xml")
        claims = self.s.tokens.verify(await self._token(request))
        if not await self.s.resource_policy.allows(claims, rest, call.query, plugin=name):
            raise PolicyDeny("Access denied by policy")
        data = await plugin.handle(call)
        if await plugin.encrypted(call):
            tee_key = extract_tee_pubkey(claims, self.s.config.attestation_token.extra_teekey_paths)
            try:
                return _json(client_jwe.encrypt(data, tee_key))
            except JweError as exc:
                raise KbsJweError(f"JWE error: {exc}") from exc
        return web.Response(status=200, body=data, content_type="text/xml")

    async def sample_plugin(self, request: web.Request) -> web.Response:
        """trustee's ``sample`` plugin: admin-authorised, any method, a fixed answer."""
        self._admin(request, AdminAuthInitialization)
        return web.Response(status=200, body=b"sample plugin response", content_type="text/xml")

    async def dispatch(self, request: web.Request) -> web.Response:
        tail = request.match_info.get("tail", "")
        segs = tail.split("/")
        first, rest, m = segs[0], segs[1:], request.method
        if first == "auth" and m == "POST" and not rest:
            return await self.auth(request)
        if first == "attest" and m == "POST" and not rest:
            return await self.attest(request)
        if first == "resource-policy" and m in ("GET", "POST") and not rest:
            return await self.resource_policy(request)
        if first == "attestation-policy" and m in ("GET", "POST") and not rest:
            return await self.attestation_policy(request)
        if first in ("resource-policy", "attestation-policy") and m == "GET" and len(rest) == 1:
            return await self.policy_text(request, first, rest[0])
        if first == "reference-value" and m in ("GET", "POST"):
            return await self.reference_value(request, rest)
        if first in self.s.config.plugins and first == "resource":
            return await self.resource(request, rest)
        if first in self.s.client_plugins:
            return await self.client_plugin(request, first, rest)
        if first in self.s.config.plugins and first == "sample":
            return await self.sample_plugin(request)
        raise PluginNotFound(f"Plugin {first[:64]} not found")  # "" too, as trustee


#: metric label values for request paths; anything else (chosen by the client) is "other",
#: so unauthenticated requests can neither add series nor put arbitrary text into /metrics
_ENDPOINTS = frozenset(
    {"auth", "attest", "resource", "resource-policy", "attestation-policy", "reference-value"}
)


def _endpoint(path: str) -> str:
    if not path.startswith("/kbs/v0/"):
        return path if path in ("/healthz", "/metrics") else "other"
    first = path[len("/kbs/v0/") :].split("/", 1)[0]
    return first if first in _ENDPOINTS else "other"


def make_app(state: KbsState) -> web.Application:
    h = _Handlers(state)
    m = state.metrics

    @web.middleware
    async def observe(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except KbsError as exc:
            status = exc.status
            log.info(
                "request refused",
                extra={"method": request.method, "path": request.path, "status": status, "err": exc.variant},
            )
            if not state.config.compatibility.detailed_error_texts:  # the client gets trustee's text
                log.info("refusal reason", extra={"err": exc.variant, "detail": exc.detail})
                return _error(exc, trustee_texts=True)
            return _error(exc)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            # a bug: logged with its traceback, answered as an RFC 7807 body (never aiohttp's bare page)
            log.exception("internal error", extra={"path": request.path})
            return _error(_InternalError("internal error"))
        finally:
            dt = time.perf_counter() - t0
            ep = _endpoint(request.path)
            m.inc("kbs_http_requests_total", endpoint=ep, method=request.method, status=str(status))
            m.observe(dt, endpoint=ep)
            log.debug(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "ms": round(dt * 1e3, 2),
                },
            )

    app = web.Application(
        middlewares=[observe], client_max_size=state.config.http_server.payload_request_size * 1024 * 1024
    )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=m.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    for method in ("GET", "POST", "PUT", "DELETE"):  # trustee's route; other methods: 405
        app.router.add_route(method, "/kbs/v0/{tail:.*}", h.dispatch)
    return app


def ssl_context(cfg: KbsServerConfig) -> ssl.SSLContext | None:
    hs = cfg.http_server
    if hs.insecure_http:
        return None
    assert hs.private_key and hs.certificate
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, path in (("certificate", hs.certificate), ("private_key", hs.private_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise KbsConfigError(f"http_server.{key} {path}: {(exc.strerror or str(exc)).lower()}") from exc
    try:
        ctx.load_cert_chain(hs.certificate, hs.private_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":  # OpenSSL's reason code, not its text
            msg = (
                f"http_server.private_key {hs.private_key} does not match "
                f"http_server.certificate {hs.certificate}"
            )
        else:
            msg = (
                f"http_server.certificate {hs.certificate} / private_key {hs.private_key}: "
                f"not a PEM certificate and unencrypted PEM key ({exc.reason or 'SSL error'})"
            )
        raise KbsConfigError(msg) from exc
    except OSError as exc:
        raise KbsConfigError(
            f"cannot load the TLS certificate/key: {(exc.strerror or str(exc)).lower()}"
        ) from exc
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    if hs.tls_profile == "modern":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif hs.tls_profile == "old":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS < 1.2 is refused by this build on purpose
    elif hs.tls_profile == "custom":
        for attr, v in (("minimum_version", hs.tls_min_version), ("maximum_version", hs.tls_max_version)):
            if v is not None:
                if v not in versions:
                    raise KbsConfigError("tls_min_version / tls_max_version must be 1.2 or 1.3")
                setattr(ctx, attr, versions[v])
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if hs.tls_ciphers:
        # trustee's lists may name TLS 1.3 suites (TLS_AES_...): Python's ssl cannot restrict those,
        # so they stay OpenSSL's TLS 1.3 defaults; the TLS <= 1.2 part is applied
        names = [c for c in hs.tls_ciphers.split(":") if c]
        legacy = [c for c in names if not c.startswith("TLS_")]
        if len(legacy) != len(names):
            log.warning("tls_ciphers: TLS 1.3 suites are OpenSSL's defaults here (not configurable)")
        if legacy:
            try:
                ctx.set_ciphers(":".join(legacy))
            except ssl.SSLError as exc:
                raise KbsConfigError("tls_ciphers is not a valid OpenSSL cipher list") from exc
    if hs.tls_groups:
        log.warning("tls_groups: key exchange groups are OpenSSL's defaults here (not configurable)")
    return ctx


async def _sweeper(state: KbsState, every_s: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(KbsError):
            n = await state.store.purge_expired()
            n += await state.sessions.purge_expired()
            if n:
                log.info("expired entries removed", extra={"count": n})


async def serve(
    cfg: KbsServerConfig, *, stop: asyncio.Event | None = None, shutdown_timeout: float = 10.0
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain and close."""
    state = await build_state(cfg)
    app = make_app(state)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        # trustee (actix) takes request heads up to 128 KiB: multi-device EAR tokens travel as Bearer
        max_field_size=MAX_HEADER_BYTES,
        max_line_size=16 * 1024,
    )
    await runner.setup()
    ctx = ssl_context(cfg)
    for sock in cfg.http_server.sockets:
        host, _, port = sock.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=ctx)
        await site.start()
        log.info("listening", extra={"socket": sock, "tls": ctx is not None})
    ev = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, ev.set)
    sweeper = asyncio.create_task(_sweeper(state))
    try:
        await ev.wait()
    finally:
        log.info("shutting down")
        sweeper.cancel()
        await runner.cleanup()
        for close in state.closers:
            await close()


def _resource_policy_body(untrusted: bytes) -> bytes:
    """trustee's resource-policy POST body: a JSON object with a string ``policy`` (unpadded
    base64url of UTF-8 Rego); other members are ignored and every failure is ParsePolicyError."""
    try:
        doc = strict_loads(untrusted)
    except ValueError as exc:
        raise ParsePolicyError("Failed to parse policy: Illegal SetPolicy Request Json") from exc
    if not isinstance(doc, dict) or "policy" not in doc:
        raise ParsePolicyError("Failed to parse policy: No `policy` field inside SetPolicy Request Json")
    if not isinstance(doc["policy"], str):
        raise ParsePolicyError(
            "Failed to parse policy: `policy` field is not a string in SetPolicy Request Json"
        )
    try:
        return unb64url(doc["policy"])
    except ValueError as exc:
        raise ParsePolicyError("Failed to parse policy: Failed to decode policy") from exc


_SET_POLICY_FAILED = "Attestation error: Set Attestation Policy failed"


def _attestation_policy_body(untrusted: bytes) -> tuple[str, bytes]:
    """trustee's ``SetPolicyInput``: string ``policy_id`` and ``policy`` (unpadded base64url)
    required, other members (``type``) ignored; any failure is trustee's KbsAttestationError
    (the reason is logged)."""
    try:
        doc = strict_loads(untrusted)
    except ValueError as exc:
        log.warning("set attestation policy: body is not JSON")
        raise KbsAttestationError(_SET_POLICY_FAILED) from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("policy_id"), str)
        or not isinstance(doc.get("policy"), str)
    ):
        log.warning("set attestation policy: policy_id and policy must be strings")
        raise KbsAttestationError(_SET_POLICY_FAILED)
    try:
        return doc["policy_id"], unb64url(doc["policy"])
    except ValueError as exc:
        log.warning("set attestation policy: policy is not unpadded base64url")
        raise KbsAttestationError(_SET_POLICY_FAILED) from exc
