"""The KBS's composition root: :func:`build_state` turns a parsed
:class:`~kbs.config.KbsServerConfig` into the :class:`KbsState` the HTTP layer
(:mod:`kbs.server`) serves from, one named step per service: storage, the
token broker and verifier, the attestation service (built-in, a separate one
over gRPC, or Intel Trust Authority), the resource policy and the client
plugins. Start-up only; nothing here runs per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .admin_auth import AdminAuthorizer
from .attestation_service import AttestationService
from .config import AttestationServiceConfig, KbsServerConfig, startup_problems
from .ear import EarBroker, TokenVerifier
from .errors import KbsConfigError, KbsError
from .external_plugin import ClientPlugin, ExternalPlugin
from .grpc_api import AsClient, RemoteAttestationService, RemoteReferenceValues, RvpsClient
from .intel_ta import IntelTrustAuthority, ItaReferenceValues
from .metrics import Metrics
from .policy import AttestationPolicies, ResourcePolicy
from .policy_worker import PolicyWorkers
from .resource_store import ResourceStore, open_resources
from .rvps import ReferenceValues
from .sessions import MAX_RECORD_BYTES, SessionStore
from .storage import (
    NS_REPOSITORY,
    EncryptedStore,
    KvStore,
    PostgresStore,
    RedisStore,
    load_at_rest_key,
    open_store,
)
from .trustee_verifiers import verifier_options
from .verifiers import DEV_TEES, VerifierRegistry

__all__ = ["KbsState", "build_state", "make_broker"]

log = logging.getLogger("kbs")

Closer = Callable[[], Awaitable[None]]
Service = AttestationService | RemoteAttestationService | IntelTrustAuthority
Rvps = ReferenceValues | RemoteReferenceValues | ItaReferenceValues


@dataclass
class KbsState:
    config: KbsServerConfig
    store: KvStore
    #: where resources live: the store's ``repository`` namespace, or Vault
    resources: ResourceStore
    sessions: SessionStore
    admin: AdminAuthorizer
    tokens: TokenVerifier
    service: Service
    resource_policy: ResourcePolicy
    rvps: Rvps
    metrics: Metrics = field(default_factory=Metrics)
    closers: list[Closer] = field(default_factory=list)
    #: trustee's client plugins served through the generic plugin flow (``external``, ``pkcs11``)
    client_plugins: dict[str, ClientPlugin] = field(default_factory=dict)


def _make_store(kind: str, cfg: KbsServerConfig, cache: dict[str, KvStore]) -> KvStore:
    """One store per storage type: data and sessions share it when their types agree."""
    if kind not in cache:
        cache[kind] = open_store(kind, cfg.storage)
    return cache[kind]


async def _open_stores(cfg: KbsServerConfig) -> tuple[KvStore, KvStore, list[KvStore]]:
    """(the data store, the session store, every backend opened); network backends must answer."""
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
    return store, sess_store, list(cache.values())


def make_broker(a: AttestationServiceConfig) -> EarBroker:
    """The EAR token broker ``[attestation_token_broker]`` describes (an ephemeral key without
    ``signer.key_path``)."""
    kw: dict[str, Any] = {
        "duration_min": a.duration_min,
        "issuer": a.issuer_name,
        "developer": a.developer_name,
        "build": a.build_name,
        "profile": a.profile_name,
    }
    if a.signer_key_path:
        return EarBroker.from_files(a.signer_key_path, a.signer_cert_path, **kw)
    return EarBroker(**kw)


async def _token_verifier(cfg: KbsServerConfig, broker: EarBroker) -> TokenVerifier:
    """The resource endpoint's token check. The built-in AS's own signing key is trusted besides
    [attestation_token]'s certs and JWK sets (``[compatibility] trust_own_signer``): the secure
    setup needs no configuration, and insecure_header_jwk stays an opt-in."""
    t = cfg.attestation_token
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
    if not cfg.attestation_service.signer_key_path and sess_kind in ("Redis", "Postgres"):
        log.warning(
            "the EAR signing key is ephemeral (no [attestation_service.attestation_token_broker.signer] "
            "key_path): tokens issued by this replica are refused by other replicas sharing the "
            "session store; give every replica the same signer key_path"
        )
    return tokens


def _dev_verifiers(cfg: KbsServerConfig) -> tuple[str, ...]:
    """The unsigned development verifiers to enable; unset: on only where tokens are forgeable
    anyway (insecure_header_jwk). Loud when any is on."""
    sec = cfg.security
    dev = sec.dev_verifiers
    if dev is None:
        dev = tuple(sorted(DEV_TEES)) if cfg.attestation_token.insecure_header_jwk else ()
    if dev:
        log.warning(
            "INSECURE: the unsigned development verifiers %s are enabled ([security] dev_verifiers%s): "
            "a client with no TEE at all can attest as them; the default resource policy refuses them, "
            "a custom one must too. For tests and demos only",
            ", ".join(dev),
            "" if sec.dev_verifiers is not None else " unset, implied by insecure_header_jwk",
        )
    return dev


async def _attestation_service(
    cfg: KbsServerConfig,
    store: KvStore,
    workers: PolicyWorkers,
    broker: EarBroker,
    registry: VerifierRegistry | None,
    closers: list[Closer],
) -> tuple[Service, Rvps]:
    """The service that appraises evidence and the reference values it reads, per
    ``[attestation_service] type``."""
    a = cfg.attestation_service
    if a.type == "intel_ta":  # Intel Trust Authority (a cloud service) appraises the evidence
        ita = await asyncio.to_thread(IntelTrustAuthority, a)
        closers.append(ita.close)
        return ita, ita.rvps
    if a.type == "coco_as_grpc":  # a separate attestation service (and the RVPS behind it)
        as_client = AsClient(a.as_addr or "http://127.0.0.1:50004")
        rv_client = RvpsClient(a.as_addr or "http://127.0.0.1:50004")
        closers += [as_client.close, rv_client.close]
        return RemoteAttestationService(as_client), RemoteReferenceValues(rv_client, store)
    rvps: ReferenceValues | RemoteReferenceValues
    if a.rvps_type == "GrpcRemote":  # built-in attestation service, separate RVPS
        rv_client = RvpsClient(a.rvps_address or "http://127.0.0.1:50003")
        closers.append(rv_client.close)
        rvps = RemoteReferenceValues(rv_client, store)
    else:
        rvps = ReferenceValues(store, hide_expired=cfg.compatibility.hide_expired_reference_values)
    policies = AttestationPolicies(store, workers)
    policies.check_at_upload = cfg.compatibility.check_policy_at_upload
    if registry is None:
        registry = VerifierRegistry(options=verifier_options(a), dev_verifiers=_dev_verifiers(cfg))
    service = AttestationService(
        registry, broker, policies, rvps, verbose_token=a.verbose_token, limits=cfg.security
    )
    service.strict_bodies = cfg.compatibility.strict_request_bodies
    return service, rvps


async def _client_plugins(cfg: KbsServerConfig) -> dict[str, ClientPlugin]:
    """trustee's plugins served through the generic plugin flow (``external``, ``pkcs11``,
    ``nebula-ca``); the others (``resource``, ``sample``) are the HTTP layer's own."""
    out: dict[str, ClientPlugin] = {}
    for pc in cfg.plugin_configs:
        if pc.name == "external":
            out["external"] = ExternalPlugin(pc.options)
        elif pc.name == "pkcs11":
            from .pkcs11_plugin import Pkcs11Plugin

            out["pkcs11"] = await Pkcs11Plugin.open(pc.options)
        elif pc.name == "nebula-ca":
            from .nebula_ca_plugin import NebulaCaPlugin

            out["nebula-ca"] = await asyncio.to_thread(NebulaCaPlugin.open, pc.options)
    return out


def _register_metrics(m: Metrics) -> None:
    m.counter("kbs_http_requests_total", "HTTP requests by endpoint, method and status")
    m.counter("kbs_attestations_total", "RCAR /attest outcomes")
    m.counter("kbs_sessions_created_total", "RCAR sessions created by /auth")
    m.counter("kbs_resource_requests_total", "resource GET outcomes")
    m.gauge("process_resident_memory_bytes", "resident set size", _rss)


def _rss() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


async def build_state(
    cfg: KbsServerConfig, *, registry: VerifierRegistry | None = None, broker: EarBroker | None = None
) -> KbsState:
    """Everything the HTTP layer needs, built from a parsed config (``registry`` / ``broker``:
    tests pass their own)."""
    problems = startup_problems(cfg)
    if problems:
        raise KbsConfigError("; ".join(problems))
    store, sess_store, backends = await _open_stores(cfg)
    closers: list[Closer] = [st.close for st in backends]
    if broker is None:
        broker = make_broker(cfg.attestation_service)
    tokens = await _token_verifier(cfg, broker)
    sec = cfg.security
    workers = PolicyWorkers(sec.policy_workers, timeout_s=sec.policy_timeout_s)
    closers.append(workers.close)
    service, rvps = await _attestation_service(cfg, store, workers, broker, registry, closers)
    rp = ResourcePolicy(store, workers)
    rp.check_at_upload = cfg.compatibility.check_policy_at_upload
    await rp.install_default()
    client_plugins = await _client_plugins(cfg)
    closers += [p.close for p in client_plugins.values()]
    resources = open_resources(cfg, store)
    closers.append(resources.close)
    timeout_min = cfg.attestation_service.timeout_min
    state = KbsState(
        config=cfg,
        store=store,
        resources=resources,
        sessions=SessionStore(
            sess_store,
            timeout_min=timeout_min,
            max_sessions=sec.max_sessions,
            # an attested record carries its token
            max_record_bytes=max(MAX_RECORD_BYTES, sec.max_token_bytes + 64 * 1024),
        ),
        admin=AdminAuthorizer(cfg.admin, base_dir=cfg.base_dir),
        tokens=tokens,
        service=service,
        resource_policy=rp,
        rvps=rvps,
        closers=closers,
        client_plugins=client_plugins,
    )
    _register_metrics(state.metrics)
    return state
