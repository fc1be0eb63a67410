"""``kbs-config.toml`` as trustee v0.21 reads it (reference §8), parsed once
into frozen dataclasses. ``[admin]`` is strict (trustee sets
``deny_unknown_fields``); other sections ignore keys we do not use, with a
warning kept in :attr:`KbsServerConfig.warnings`, so trustee's own configs load
unchanged. The spellings trustee's serde accepts are accepted here too:
storage types ``Memory``/``memory``, ``LocalJson``/``local_json``,
``LocalFs``/``local_fs``, ``Redis``/``redis``, ``Postgres``/``postgres``;
attestation service ``CoCoASBuiltIn``/``coco_as_builtin``,
``CoCoASGrpc``/``coco_as_grpc``, ``IntelTA``/``intel_ta``.

Problems trustee only finds when it starts (no TLS key, no identity provider,
a service this KBS does not serve) are not load errors: :func:`startup_problems`
lists them, the server refuses to start on any, ``kbs --check`` reports them."""

from __future__ import annotations

import contextvars
import logging
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from coco_common.fields import Fields, closest
from coco_common.files import FileTooLarge, read_bounded
from coco_common.strict_json import strict_loads

from .errors import KbsConfigError
from .trustee_verifiers import SECTIONS as TRUSTEE_VERIFIER_SECTIONS
from .trustee_verifiers import (
    TrusteeVerifierConfig,
    check_overlaps,
    parse_trustee_verifier_config,
    trustee_verifier_problems,
)
from .vault_kv import parse_vault_config

__all__ = [
    "AdminConfig",
    "AttestationServiceConfig",
    "AttestationTokenConfig",
    "CompatibilityConfig",
    "HttpServerConfig",
    "IdentityProvider",
    "KbsServerConfig",
    "PluginConfig",
    "PostgresConfig",
    "RoleAcl",
    "SecurityConfig",
    "StorageConfig",
    "effective_config",
    "load_config",
    "load_document",
    "parse_as_server_config",
    "parse_compatibility",
    "parse_config",
    "parse_rvps_server_config",
    "security_config",
    "startup_problems",
]

log = logging.getLogger(__name__)
MAX_CONFIG_BYTES = 1024 * 1024
ADMIN_MODES = ("InsecureAllowAll", "DenyAll", "AuthenticatedAuthorization")
#: trustee's ``KeyValueStorageType`` variants and their serde aliases
STORAGE_TYPES = {
    "Memory": "Memory",
    "memory": "Memory",
    "LocalJson": "LocalJson",
    "local_json": "LocalJson",
    "LocalFs": "LocalFs",
    "local_fs": "LocalFs",
    "Postgres": "Postgres",
    "postgres": "Postgres",
    "Redis": "Redis",
    "redis": "Redis",
}
#: trustee's ``AttestationServiceConfig`` variants (``type``) and their aliases
AS_TYPES = {
    "CoCoASBuiltIn": "coco_as_builtin",
    "coco_as_builtin": "coco_as_builtin",
    "CoCoASGrpc": "coco_as_grpc",
    "coco_as_grpc": "coco_as_grpc",
    "IntelTA": "intel_ta",
    "intel_ta": "intel_ta",
}
#: trustee's ``PluginsConfig`` variants (``name``) and their aliases
PLUGIN_NAMES = {
    "Sample": "sample",
    "sample": "sample",
    "ResourceStorage": "resource",
    "resource": "resource",
    "NebulaCaPlugin": "nebula-ca",
    "nebula-ca": "nebula-ca",
    "Pkcs11": "pkcs11",
    "pkcs11": "pkcs11",
    "ExternalPlugin": "external",
    "external": "external",
}
#: what this KBS serves today (anything else loads, and is named by :func:`startup_problems`)
SERVED_AS_TYPES = ("coco_as_builtin", "coco_as_grpc", "intel_ta")
SERVED_PLUGINS = ("resource", "sample", "external", "pkcs11", "nebula-ca")
SERVED_RVPS = ("BuiltIn", "GrpcRemote")

_warnings: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_warnings", default=None)


def _warn(msg: str) -> None:
    log.warning("config: %s", msg)
    _note(msg)


def _note(msg: str) -> None:
    """List ``msg`` among the config's warnings without logging it (its owner logs it)."""
    sink = _warnings.get()
    if sink is not None:
        sink.append(msg)


@dataclass(frozen=True)
class HttpServerConfig:
    sockets: tuple[str, ...] = ("127.0.0.1:8080",)
    insecure_http: bool = False
    private_key: str | None = None
    certificate: str | None = None
    payload_request_size: int = 2  # MiB
    worker_count: int | None = None
    tls_profile: str = "intermediate"
    tls_min_version: str | None = None
    tls_max_version: str | None = None
    tls_ciphers: str | None = None
    tls_groups: str | None = None


@dataclass(frozen=True)
class IdentityProvider:
    issuer: str | None = None
    audience: str | None = None
    #: a file path (or file:// URI) holding a PEM public key, or the PEM itself
    public_key_uri: str | None = None
    #: a JWKS file path / file:// URI
    jwk_set_uri: str | None = None


@dataclass(frozen=True)
class RoleAcl:
    role: str
    allowed_endpoints: str


@dataclass(frozen=True)
class LegacyPersona:
    id: str
    public_key_path: str


@dataclass(frozen=True)
class AdminConfig:
    #: InsecureAllowAll | DenyAll | AuthenticatedAuthorization | Legacy (v0.11-v0.20 configs)
    mode: str = "DenyAll"
    identity_providers: tuple[IdentityProvider, ...] = ()
    acls: tuple[RoleAcl, ...] = ()
    #: older generations: Ed25519 public keys (persona id -> PEM path); auth_public_key is persona "admin"
    personas: tuple[LegacyPersona, ...] = ()


@dataclass(frozen=True)
class AttestationTokenConfig:
    trusted_certs_paths: tuple[str, ...] = ()
    trusted_jwk_sets: tuple[str, ...] = ()
    extra_teekey_paths: tuple[str, ...] = ()
    insecure_header_jwk: bool = False


@dataclass(frozen=True)
class AttestationServiceConfig:
    type: str = "coco_as_builtin"
    timeout_min: int = 5
    duration_min: int = 5
    issuer_name: str = "CoCo-Attestation-Service"
    developer_name: str = "https://confidentialcontainers.org"
    build_name: str = "attestation-service 0.1.0 (coco-py)"
    profile_name: str = "tag:github.com,2024:confidential-containers/Trustee"
    signer_key_path: str | None = None
    signer_cert_path: str | None = None
    verbose_token: bool = True
    #: verifier constructor options per TEE, passed through as keyword arguments
    verifier_config: Mapping[str, Any] = field(default_factory=dict)
    #: trustee's ``*_verifier`` sections (``snp_verifier``, ``dcap_verifier`` ...), applied to the
    #: verifiers (:mod:`kbs.trustee_verifiers`)
    trustee_verifier_config: TrusteeVerifierConfig = field(default_factory=TrusteeVerifierConfig)
    #: ``[attestation_service.rvps_config]``: ``BuiltIn`` or ``GrpcRemote`` (+ ``address``)
    rvps_type: str = "BuiltIn"
    rvps_address: str | None = None
    #: ``coco_as_grpc``: the attestation service's gRPC address and connection pool size
    as_addr: str | None = None
    pool_size: int | None = None
    #: ``intel_ta``: trustee's ``IntelTrustAuthorityConfig`` (api_key is a secret: not in repr)
    ita_base_url: str | None = None
    ita_api_key: str | None = field(default=None, repr=False)
    ita_certs_file: str | None = None
    ita_allow_unmatched_policy: bool | None = None
    ita_policy_ids: tuple[str, ...] = ()
    #: ``[attestation_service] storage_type`` / signer ``cert_url``: accepted, not used
    as_storage_type: str | None = None
    signer_cert_url: str | None = None


@dataclass(frozen=True)
class PostgresConfig:
    """trustee's ``[storage_backend.backends.postgres]`` (defaults as upstream)."""

    db: str = "postgres"
    username: str = "postgres"
    password: str | None = field(default=None, repr=False)
    port: int = 5432
    host: str = "localhost"


@dataclass(frozen=True)
class PluginConfig:
    """One ``[[plugins]]`` entry: the canonical name and its other keys as given."""

    name: str
    #: may hold secrets (pkcs11 ``pin``): not in repr; ``kbs --check`` redacts them
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StorageConfig:
    storage_type: str = "Memory"
    local_fs_dir: str = "/opt/confidential-containers/storage/local_fs"
    #: ``backends.local_json.file_dir_path``: one JSON file per namespace
    local_json_dir: str = "/opt/confidential-containers/storage/local_json"
    redis_url: str = "redis://127.0.0.1:6379"
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    #: which ``backends.*`` tables were given (trustee requires the one its type uses)
    backends_given: tuple[str, ...] = ()
    #: trustee's top-level ``session_storage_type`` (also read inside [storage_backend], as before)
    session_storage_type: str | None = None
    #: file with a 32-byte key (raw or hex); resources are AES-256-GCM encrypted at rest when set
    encryption_key_path: str | None = None


#: the unsigned development TEEs; their verifiers check report-data binding only
DEV_VERIFIERS = ("sample", "sampledevice")


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: this KBS's own limits (trustee has no such section). Every bound applies
    to what arrives, after decoding, before a parser or the policy engine sees it."""

    #: unsigned dev verifiers to enable (``sample``, ``sampledevice``); None: enabled only when
    #: ``[attestation_token] insecure_header_jwk = true`` (anyone can forge tokens there anyway)
    dev_verifiers: tuple[str, ...] | None = None
    #: live RCAR sessions per replica; past it the oldest unattested session is evicted
    max_sessions: int = 10000
    #: largest EAR token this KBS issues and stores (the bearer header limit is 128 KiB)
    max_token_bytes: int = 128 * 1024
    #: primary plus additional evidence, as JSON text
    max_evidence_bytes: int = 1024 * 1024
    #: the init-data TOML document
    max_init_data_bytes: int = 64 * 1024
    #: nesting depth and node count of any claims document handed to the policy engine
    max_claims_depth: int = 32
    max_claims_items: int = 20000
    #: wall-clock budget of one policy evaluation or parse check (in a worker process)
    policy_timeout_s: float = 5.0
    #: policy worker processes
    policy_workers: int = 2


@dataclass(frozen=True)
class CompatibilityConfig:
    """``[compatibility]``: where this KBS deliberately differs from trustee v0.21, one key per
    difference; each set the other way gives trustee's behaviour (trustee has no such section)."""

    #: trust tokens signed by this KBS's own built-in attestation service without configuring its
    #: key; false: as trustee, only [attestation_token] trusted_certs_paths / trusted_jwk_sets /
    #: insecure_header_jwk decide
    trust_own_signer: bool = True
    #: an expired reference value is absent; false: as trustee's RVPS, it is still returned
    hide_expired_reference_values: bool = True
    #: uploaded resource and attestation policies must parse as Rego (ParsePolicyError otherwise);
    #: false: as trustee, any UTF-8 text is stored and a broken policy fails when evaluated
    check_policy_at_upload: bool = True
    #: error ``detail`` texts say what failed; false: trustee's texts (e.g. "Plugin internal
    #: error", "Token Verifier error", "Serialize/Deserialize failed"), the reason only logged
    detailed_error_texts: bool = True
    #: /auth and /attest bodies with members the protocol does not define are refused
    #: (Serialize/Deserialize failed); false: as trustee's serde, unknown members are ignored
    strict_request_bodies: bool = True


@dataclass(frozen=True)
class KbsServerConfig:
    http_server: HttpServerConfig
    admin: AdminConfig
    attestation_token: AttestationTokenConfig = field(default_factory=AttestationTokenConfig)
    attestation_service: AttestationServiceConfig = field(default_factory=AttestationServiceConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    plugins: tuple[str, ...] = ()
    #: relative paths are read from the working directory, as trustee does
    base_dir: str = "."
    security: SecurityConfig = field(default_factory=SecurityConfig)
    plugin_configs: tuple[PluginConfig, ...] = ()
    compatibility: CompatibilityConfig = field(default_factory=CompatibilityConfig)
    #: keys this KBS ignores (unknown or legacy), one line each; ``kbs --check --strict`` fails on any
    warnings: tuple[str, ...] = ()


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, Mapping):
        raise KbsConfigError(f"[{key}] must be a table")
    return v


def _fields(tbl: Mapping[str, Any], where: str) -> Fields:
    """A typed reader over one table; a wrong type is a :class:`KbsConfigError` naming the key."""
    return Fields(tbl, error=KbsConfigError, where=where)


def _strs(f: Fields, key: str) -> tuple[str, ...]:
    return tuple(f.list(key, str, []) or ())


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    hint = closest(key, known)
    return f" (did you mean {hint}?)" if hint else ""


def _unused(tbl: Mapping[str, Any], known: set[str], where: str) -> None:
    for k in tbl:
        if k not in known:
            _warn(f"{where}.{k} is not a key this KBS reads: ignored{_did_you_mean(k, known)}")


def _ignore_unread(f: Fields, *legacy: str) -> None:
    """Warn about every key of ``f``'s table that was not read (nor is a known ``legacy`` key):
    trustee's serde ignores unknown keys, this KBS says so."""
    _unused(f.table, f.used | set(legacy), f.where)


def _http(tbl: Mapping[str, Any]) -> HttpServerConfig:
    f = _fields(tbl, "http_server")
    sockets = _strs(f, "sockets") or ("127.0.0.1:8080",)
    for sock in sockets:
        host, sep, port = sock.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise KbsConfigError(f"http_server.sockets: {sock!r} is not an address:port")
    cfg = HttpServerConfig(
        sockets=sockets,
        insecure_http=bool(f.bool("insecure_http", False)),
        private_key=f.str("private_key"),
        certificate=f.str("certificate"),
        payload_request_size=f.int("payload_request_size", 2) or 0,
        worker_count=f.int("worker_count"),
        tls_profile=f.str("tls_profile", "intermediate") or "",
        tls_min_version=f.str("tls_min_version"),
        tls_max_version=f.str("tls_max_version"),
        tls_ciphers=f.str("tls_ciphers"),
        tls_groups=f.str("tls_groups"),
    )
    _ignore_unread(f)
    for key in ("tls_min_version", "tls_max_version"):
        if getattr(cfg, key) not in (None, "1.2", "1.3"):
            raise KbsConfigError(f'http_server.{key} must be "1.2" or "1.3"')
    if cfg.tls_min_version == "1.3" and cfg.tls_max_version == "1.2":
        raise KbsConfigError("http_server.tls_min_version cannot be greater than tls_max_version")
    if cfg.tls_profile not in ("old", "intermediate", "modern", "custom"):
        raise KbsConfigError("http_server.tls_profile must be old, intermediate, modern or custom")
    if not 0 < cfg.payload_request_size <= 1024:
        raise KbsConfigError("http_server.payload_request_size must be 1..1024 MiB")
    return cfg


def _strict(tbl: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """trustee's ``deny_unknown_fields`` tables ([admin], and this KBS's own sections)."""
    extra = sorted(set(tbl) - allowed)
    if extra:
        hint = _did_you_mean(extra[0], allowed)
        raise KbsConfigError(f"{where}: unknown field(s) {', '.join(extra)}{hint}")


_IDP = "admin.authentication.bearer_jwt.identity_providers"


def _admin(tbl: Mapping[str, Any]) -> AdminConfig:
    if "type" in tbl or "auth_public_key" in tbl or "insecure_api" in tbl:
        return _legacy_admin(tbl)
    _strict(tbl, {"authorization_mode", "authentication", "authorization"}, "[admin]")
    if "authorization_mode" not in tbl:
        # trustee's AdminConfig is a tagged enum: the tag is required
        raise KbsConfigError(
            "admin.authorization_mode is required (InsecureAllowAll, DenyAll or AuthenticatedAuthorization)"
        )
    mode = tbl["authorization_mode"]
    if mode not in ADMIN_MODES:
        raise KbsConfigError(f"admin.authorization_mode must be one of {', '.join(ADMIN_MODES)}")
    if mode != "AuthenticatedAuthorization":
        return AdminConfig(mode=mode)
    authn = _table(tbl, "authentication")
    authz = _table(tbl, "authorization")
    _strict(authn, {"bearer_jwt"}, "[admin.authentication]")
    _strict(authz, {"regex_acl"}, "[admin.authorization]")
    return AdminConfig(mode=mode, identity_providers=_idps(_table(authn, "bearer_jwt")), acls=_acls(authz))


def _idps(bj: Mapping[str, Any]) -> tuple[IdentityProvider, ...]:
    _strict(bj, {"identity_providers"}, "[admin.authentication.bearer_jwt]")
    raw_idps = bj.get("identity_providers", [])
    if not isinstance(raw_idps, list):
        raise KbsConfigError(f"{_IDP} must be a list")
    idps: list[IdentityProvider] = []
    for raw in raw_idps:
        if not isinstance(raw, Mapping):
            raise KbsConfigError(f"{_IDP} entries must be tables")
        _strict(raw, {"issuer", "audience", "public_key_uri", "jwk_set_uri"}, "identity provider")
        f = _fields(raw, _IDP)
        # an entry without a key source, or no entry at all, is refused when the KBS starts
        # (trustee's AdminConfig::validate), not here: see startup_problems
        idps.append(
            IdentityProvider(
                issuer=f.str("issuer"),
                audience=f.str("audience"),
                public_key_uri=f.str("public_key_uri"),
                jwk_set_uri=f.str("jwk_set_uri"),
            )
        )
    return tuple(idps)


def _acls(authz: Mapping[str, Any]) -> tuple[RoleAcl, ...]:
    ra = _table(authz, "regex_acl")
    _strict(ra, {"acls"}, "[admin.authorization.regex_acl]")
    acls: list[RoleAcl] = []
    for raw in ra.get("acls", []):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("role"), str):
            raise KbsConfigError("admin.authorization.regex_acl.acls entries need a string role")
        _strict(raw, {"role", "allowed_endpoints"}, "acl")
        ep = raw.get("allowed_endpoints")
        if not isinstance(ep, str) or not ep.startswith("^/kbs") or not ep.endswith("$"):
            raise KbsConfigError(
                "admin.authorization.regex_acl.acls.allowed_endpoints must be a regex anchored as ^/kbs...$"
            )
        acls.append(RoleAcl(raw["role"], ep))
    return tuple(acls)


def _legacy_admin(tbl: Mapping[str, Any]) -> AdminConfig:
    """trustee <= v0.20: ``auth_public_key`` / ``insecure_api`` or ``type = Simple`` with personas."""
    if tbl.get("insecure_api") is True or tbl.get("type") == "InsecureAllowAll":
        return AdminConfig(mode="InsecureAllowAll")
    if tbl.get("type") == "DenyAll":
        return AdminConfig(mode="DenyAll")
    personas: list[LegacyPersona] = []
    if isinstance(tbl.get("auth_public_key"), str):
        personas.append(LegacyPersona("admin", tbl["auth_public_key"]))
    for raw in tbl.get("personas", []) or []:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            raise KbsConfigError("[[admin.personas]] needs id and public_key_path")
        if not isinstance(raw.get("public_key_path"), str):
            raise KbsConfigError("[[admin.personas]] needs id and public_key_path")
        personas.append(LegacyPersona(raw["id"], raw["public_key_path"]))
    acls = tuple(
        RoleAcl(str(r.get("id")), str(r.get("allowed_endpoints")))
        for r in tbl.get("roles", []) or []
        if isinstance(r, Mapping)
    )
    if not personas:
        raise KbsConfigError("legacy [admin] needs auth_public_key or personas")
    return AdminConfig(mode="Legacy", personas=tuple(personas), acls=acls)


def _token(tbl: Mapping[str, Any]) -> AttestationTokenConfig:
    f = _fields(tbl, "attestation_token")
    if "insecure_key" in tbl:
        # trustee's verifier config has no deny_unknown_fields: the old key is ignored there too
        _warn("attestation_token.insecure_key is ignored (renamed insecure_header_jwk in trustee v0.21)")
    cfg = AttestationTokenConfig(
        trusted_certs_paths=_strs(f, "trusted_certs_paths"),
        trusted_jwk_sets=_strs(f, "trusted_jwk_sets"),
        extra_teekey_paths=_strs(f, "extra_teekey_paths"),
        insecure_header_jwk=bool(f.bool("insecure_header_jwk", False)),
    )
    _ignore_unread(f, "insecure_key")
    return cfg


def _as(tbl: Mapping[str, Any]) -> AttestationServiceConfig:
    """``[attestation_service]``: one of trustee's three attestation services."""
    raw_type = tbl.get("type", "coco_as_builtin")
    if not isinstance(raw_type, str) or raw_type not in AS_TYPES:
        raise KbsConfigError(f"attestation_service.type {raw_type!r} is not one of {', '.join(AS_TYPES)}")
    f = _fields(tbl, "attestation_service")
    f.str("type")
    timeout = f.int("timeout", 5) or 0
    typ = AS_TYPES[raw_type]
    if typ == "coco_as_grpc":
        cfg = _as_grpc(f, timeout)
    elif typ == "intel_ta":
        cfg = _as_ita(f, timeout)
    else:
        cfg = _as_builtin(f, timeout)
    _ignore_unread(f)
    return cfg


def _as_grpc(f: Fields, timeout: int) -> AttestationServiceConfig:
    """``coco_as_grpc``: a separate attestation service at ``as_addr``."""
    return AttestationServiceConfig(
        type="coco_as_grpc",
        timeout_min=timeout,
        as_addr=f.str("as_addr", "http://127.0.0.1:50004"),
        pool_size=f.int("pool_size", 100, min=1),
    )


def _as_ita(f: Fields, timeout: int) -> AttestationServiceConfig:
    """``intel_ta``: trustee's ``IntelTrustAuthorityConfig``."""
    for k in ("base_url", "api_key", "certs_file"):
        if k not in f.table:
            raise KbsConfigError(f"attestation_service.{k} is required for intel_ta")
    return AttestationServiceConfig(
        type="intel_ta",
        timeout_min=timeout,
        ita_base_url=f.str("base_url"),
        ita_api_key=f.str("api_key"),
        ita_certs_file=f.str("certs_file"),
        ita_allow_unmatched_policy=f.bool("allow_unmatched_policy"),
        ita_policy_ids=_strs(f, "policy_ids"),
    )


def _as_builtin(f: Fields, timeout: int) -> AttestationServiceConfig:
    """``coco_as_builtin``: the token broker, the RVPS and the verifiers' options."""
    d = AttestationServiceConfig()
    broker = f.sub("attestation_token_broker") or _fields({}, f"{f.where}.attestation_token_broker")
    if broker.str("type", "Ear") not in ("Ear", "ear"):
        raise broker.fail("type", "must be Ear (the only token broker trustee v0.21 has)")
    broker.str("policy_dir")  # trustee's policy directory: policies live in the store here
    signer = broker.sub("signer") or _fields({}, f"{broker.where}.signer")
    rvps_type, rvps_address = _rvps(f.sub("rvps_config") or _fields({}, f"{f.where}.rvps_config"))
    ours, theirs = _verifier_config(f)
    f.str("work_dir")  # trustee's working directory: this KBS keeps its state in the store
    ast = f.str("storage_type")
    if ast is not None and ast not in STORAGE_TYPES:
        raise KbsConfigError(
            f"attestation_service.storage_type {ast!r} is not one of {', '.join(STORAGE_TYPES)}"
        )
    cfg = AttestationServiceConfig(
        type="coco_as_builtin",
        timeout_min=timeout,
        duration_min=broker.int("duration_min", 5) or 0,
        issuer_name=broker.str("issuer_name", d.issuer_name) or "",
        developer_name=broker.str("developer_name", d.developer_name) or "",
        build_name=broker.str("build_name", d.build_name) or "",
        profile_name=broker.str("profile_name", d.profile_name) or "",
        signer_key_path=signer.str("key_path"),
        signer_cert_path=signer.str("cert_path"),
        signer_cert_url=signer.str("cert_url"),
        verbose_token=bool(broker.bool("verbose_token", True)),
        verifier_config=ours,
        trustee_verifier_config=theirs,
        rvps_type=rvps_type,
        rvps_address=rvps_address,
        as_storage_type=STORAGE_TYPES[ast] if ast is not None else None,
    )
    for g in (broker, signer):
        _ignore_unread(g)
    return cfg


def _rvps(f: Fields) -> tuple[str, str | None]:
    """``rvps_config``: ``BuiltIn`` (its storage is the KBS's) or ``GrpcRemote`` at ``address``."""
    rvps_type = f.str("type", "BuiltIn") or ""
    if rvps_type not in ("BuiltIn", "GrpcRemote"):
        raise f.fail("type", "must be BuiltIn or GrpcRemote")
    address = f.str("address")
    _ignore_unread(f, *(("storage", "extractors") if rvps_type == "BuiltIn" else ()))
    return rvps_type, address


def _verifier_config(f: Fields) -> tuple[dict[str, Any], TrusteeVerifierConfig]:
    """``verifier_config``: this KBS's ``<tee>`` tables (constructor options) and trustee's
    ``*_verifier`` sections (:mod:`kbs.trustee_verifiers`)."""
    vc = f.get("verifier_config", Mapping, {})
    for k, v in vc.items():
        if not isinstance(v, Mapping):
            raise KbsConfigError(f"attestation_service.verifier_config.{k} must be a table")
    ours = {k: v for k, v in vc.items() if k not in TRUSTEE_VERIFIER_SECTIONS}
    theirs = parse_trustee_verifier_config(
        {k: v for k, v in vc.items() if k in TRUSTEE_VERIFIER_SECTIONS}, _warn
    )
    check_overlaps(theirs, ours)
    return ours, theirs


def _storage_type(v: Any, where: str) -> str:
    if not isinstance(v, str) or v not in STORAGE_TYPES:
        raise KbsConfigError(f"{where} {v!r} is not one of {', '.join(STORAGE_TYPES)}")
    return STORAGE_TYPES[v]


def _session_storage_type(tbl: Mapping[str, Any], top_session: Any) -> str | None:
    if top_session is not None:
        return _storage_type(top_session, "session_storage_type")
    if tbl.get("session_storage_type") is not None:
        # where this KBS used to read it; trustee reads only the top-level key
        _warn("storage_backend.session_storage_type is read for compatibility (trustee: top level only)")
        return _storage_type(tbl["session_storage_type"], "storage_backend.session_storage_type")
    return None


_BACKENDS = ("local_fs", "local_json", "redis", "postgres")


def _storage(tbl: Mapping[str, Any], top_session: Any) -> StorageConfig:
    f = _fields(tbl, "storage_backend")
    st = _storage_type(f.get("storage_type", str, "Memory"), "storage_backend.storage_type")
    sst = _session_storage_type(tbl, top_session)
    backends = f.sub("backends") or _fields({}, "storage_backend.backends")
    b = {k: backends.sub(k) or _fields({}, f"{backends.where}.{k}") for k in _BACKENDS}
    enc = f.sub("encryption") or _fields({}, "storage_backend.encryption")
    d = StorageConfig()
    dp = PostgresConfig()
    pg = b["postgres"]
    cfg = StorageConfig(
        storage_type=st,
        local_fs_dir=b["local_fs"].str("dir_path", d.local_fs_dir) or "",
        local_json_dir=b["local_json"].str("file_dir_path", d.local_json_dir) or "",
        redis_url=b["redis"].str("url", d.redis_url) or "",
        postgres=PostgresConfig(
            db=pg.str("db", dp.db) or "",
            username=pg.str("username", dp.username) or "",
            password=pg.str("password"),
            port=pg.int("port", dp.port, min=1, max=65535) or 0,
            host=pg.str("host", dp.host) or "",
        ),
        backends_given=tuple(sorted(k for k in _BACKENDS if k in backends.table)),
        session_storage_type=sst,
        encryption_key_path=enc.str("key_path"),
    )
    _ignore_unread(f, "session_storage_type")
    for g in (backends, *b.values()):
        _ignore_unread(g)
    return cfg


def security_config(tbl: Mapping[str, Any]) -> SecurityConfig:
    """Parse a ``[security]`` table (the KBS config's, or the ``grpc-as`` config's ``security``)."""
    return _security(tbl)


_SECURITY_INTS = ("max_sessions", "max_token_bytes", "max_evidence_bytes", "max_init_data_bytes",
                  "max_claims_depth", "max_claims_items", "policy_workers")  # fmt: skip


def _security(tbl: Mapping[str, Any]) -> SecurityConfig:
    _strict(tbl, {x.name for x in fields(SecurityConfig)}, "[security]")
    f = _fields(tbl, "security")
    d = SecurityConfig()
    dev: tuple[str, ...] | None = None
    if "dev_verifiers" in tbl:
        dev = _strs(f, "dev_verifiers")
        bad = sorted(set(dev) - set(DEV_VERIFIERS))
        if bad:
            raise KbsConfigError(f"security.dev_verifiers: unknown dev verifier(s) {', '.join(bad)}")
    ints: dict[str, int] = {}
    for k in _SECURITY_INTS:
        v = f.int(k, getattr(d, k)) or 0
        if v < 1:
            raise KbsConfigError(f"security.{k} must be positive")
        ints[k] = v
    timeout = f.get("policy_timeout_s", (int, float), d.policy_timeout_s)
    if not 0 < timeout <= 600:
        raise KbsConfigError("security.policy_timeout_s must be in (0, 600]")
    return SecurityConfig(dev_verifiers=dev, policy_timeout_s=float(timeout), **ints)


_RESOURCE_BACKENDS = ("kvstorage", "aliyun", "aws", "gcp", "vault", "Aliyun", "Aws", "Gcp", "Vault")


def _plugin(raw: Any) -> PluginConfig:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise KbsConfigError("plugins: every [[plugins]] entry needs a string name")
    if raw["name"] not in PLUGIN_NAMES:
        raise KbsConfigError(f"plugins.name {raw['name']!r} is not one of {', '.join(PLUGIN_NAMES)}")
    name = PLUGIN_NAMES[raw["name"]]
    opts = {k: v for k, v in raw.items() if k != "name"}
    f = _fields(opts, f"plugins.{name}")
    if name == "resource":
        sbt = opts.get("storage_backend_type", "kvstorage")
        if sbt not in _RESOURCE_BACKENDS:
            raise f.fail("storage_backend_type", f"{sbt!r} is not a resource backend trustee has")
        if str(sbt).lower() == "vault":
            # listed for --check; logged once, by the backend when the KBS builds it
            for line in parse_vault_config(opts, KbsConfigError).warnings():
                _note(line)
    elif name == "sample":
        f.str("item")
    elif name == "pkcs11":
        f.str("module", required=True)
        f.str("pin", required=True)
        f.int("slot_index", 0)
        f.str("lookup_label", "")
        if f.str("rsa_mechanism", "RsaPkcsOaep") not in ("RsaPkcsOaep", "RsaPkcsTest"):
            raise f.fail("rsa_mechanism", "must be RsaPkcsOaep or RsaPkcsTest")
    elif name == "external":
        for b in f.list("backends", Mapping, []) or []:
            bf = _fields(b, f"{f.where}.backends")
            bf.str("name", required=True)
            bf.str("endpoint", required=True)
            bf.int("timeout_ms")
            bf.str("ca_cert_path")
            bf.str("tls_mode")
    return PluginConfig(name, opts)


def parse_config(doc: Mapping[str, Any], base_dir: str = ".") -> KbsServerConfig:
    """Validate ``doc`` as trustee's ``KbsServerConfig`` deserialisation does; a :class:`KbsConfigError`
    names the offending key."""
    sink: list[str] = []
    tok = _warnings.set(sink)
    try:
        cfg = _parse(doc, base_dir)
    finally:
        _warnings.reset(tok)
    return replace(cfg, warnings=tuple(sink))


def _parse(doc: Mapping[str, Any], base_dir: str) -> KbsServerConfig:
    for required in ("http_server", "admin"):
        if required not in doc:
            raise KbsConfigError(f"the [{required}] section is required")
    _unused(
        doc,
        {
            "http_server",
            "admin",
            "attestation_token",
            "attestation_service",
            "storage_backend",
            "session_storage_type",
            "plugins",
            "security",
            "compatibility",
        },
        "config",
    )
    raw_plugins = doc.get("plugins", []) or []
    if not isinstance(raw_plugins, list):
        raise KbsConfigError("plugins must be a list of [[plugins]] tables")
    pcs = tuple(_plugin(p) for p in raw_plugins)
    return KbsServerConfig(
        http_server=_http(_table(doc, "http_server")),
        admin=_admin(_table(doc, "admin")),
        attestation_token=_token(_table(doc, "attestation_token")),
        attestation_service=_as(_table(doc, "attestation_service")),
        storage=_storage(_table(doc, "storage_backend"), doc.get("session_storage_type")),
        plugins=tuple(p.name for p in pcs),
        base_dir=base_dir,
        security=_security(_table(doc, "security")),
        plugin_configs=pcs,
        compatibility=_compat(_table(doc, "compatibility")),
    )


def _compat(tbl: Mapping[str, Any]) -> CompatibilityConfig:
    _strict(tbl, {x.name for x in fields(CompatibilityConfig)}, "[compatibility]")
    f = _fields(tbl, "compatibility")
    return CompatibilityConfig(**{x.name: bool(f.bool(x.name, True)) for x in fields(CompatibilityConfig)})


def parse_compatibility(doc: Mapping[str, Any]) -> CompatibilityConfig:
    """The ``[compatibility]`` table of a config document (the KBS's, or ``grpc-as``'s)."""
    return _compat(_table(doc, "compatibility"))


def parse_as_server_config(
    doc: Mapping[str, Any],
) -> tuple[AttestationServiceConfig, StorageConfig, list[str]]:
    """The ``grpc-as`` config (trustee's attestation-service ``config.json`` keys): ``rvps_config``,
    ``attestation_token_broker``, ``verifier_config``, ``storage_backend``; -> (service config,
    storage config, warnings)."""
    sink: list[str] = []
    tok = _warnings.set(sink)
    try:
        _unused(
            doc,
            {
                "work_dir",
                "rvps_config",
                "attestation_token_broker",
                "verifier_config",
                "storage_backend",
                "compatibility",
                "security",
            },
            "config",
        )
        as_doc = {
            k: doc[k] for k in ("rvps_config", "attestation_token_broker", "verifier_config") if k in doc
        }
        a = _as({"type": "coco_as_builtin", **as_doc})
        st = _storage(_table(doc, "storage_backend"), None)
    finally:
        _warnings.reset(tok)
    return a, st, sink


def parse_rvps_server_config(doc: Mapping[str, Any]) -> tuple[StorageConfig, list[str]]:
    """The ``rvps`` config (trustee's RVPS: ``storage`` as a storage backend table, ``extractors``)."""
    sink: list[str] = []
    tok = _warnings.set(sink)
    try:
        _unused(doc, {"storage", "extractors"}, "config")
        st = _storage(_table(doc, "storage"), None)
    finally:
        _warnings.reset(tok)
    return st, sink


_SECRET_KEYS = frozenset({"password", "ita_api_key", "api_key", "pin", "token"})


def _redact(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {
            k: ("<redacted>" if k in _SECRET_KEYS and x is not None else _redact(x)) for k, x in v.items()
        }
    if isinstance(v, list | tuple):
        return [_redact(x) for x in v]
    return v


def effective_config(cfg: KbsServerConfig) -> dict[str, Any]:
    """The parsed config as plain JSON-able data (secrets redacted), for ``kbs --check``."""
    out = _redact(asdict(cfg))
    assert isinstance(out, dict)
    return out


def startup_problems(cfg: KbsServerConfig) -> list[str]:
    """What would stop this KBS from starting with ``cfg`` although the file loads: checks trustee
    makes when it starts, and services this KBS does not serve. The server refuses to start on any."""
    out: list[str] = []
    h = cfg.http_server
    if not h.insecure_http and not (h.private_key and h.certificate):
        out.append("http_server: private_key and certificate are required unless insecure_http = true")
    a = cfg.admin
    if a.mode == "AuthenticatedAuthorization":
        if not a.identity_providers:
            out.append("admin: AuthenticatedAuthorization needs at least one identity_providers entry")
        for i, idp in enumerate(a.identity_providers):
            if not idp.public_key_uri and not idp.jwk_set_uri:
                out.append(f"admin: identity_providers[{i}] needs public_key_uri or jwk_set_uri")
    s = cfg.attestation_service
    out += trustee_verifier_problems(s.trustee_verifier_config)
    if s.type not in SERVED_AS_TYPES:
        out.append(f"attestation_service.type {s.type} is not served by this KBS")
    elif s.rvps_type not in SERVED_RVPS:
        out.append(f"attestation_service.rvps_config.type {s.rvps_type} is not served by this KBS")
    st = cfg.storage
    for kind in {st.storage_type, st.session_storage_type or st.storage_type}:
        if kind not in _SERVED_STORAGE:
            out.append(f"storage_backend.storage_type {kind} is not served by this KBS")
    for p in cfg.plugin_configs:
        if p.name not in SERVED_PLUGINS:
            out.append(f"plugins: {p.name} is not served by this KBS")
        elif p.name == "resource" and str(p.options.get("storage_backend_type", "kvstorage")).lower() not in (
            "kvstorage",
            "vault",
        ):
            out.append(
                f"plugins.resource.storage_backend_type {p.options['storage_backend_type']} is not served"
            )
    return out


#: storage types the server can open (grows as backends land)
_SERVED_STORAGE = ("Memory", "LocalFs", "LocalJson", "Redis", "Postgres")


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str) -> KbsServerConfig:
    """Read a TOML (or YAML / JSON, by extension) config file."""
    # relative paths in the file (keys, storage dirs) are read from the working directory, as trustee
    return parse_config(load_document(path), ".")


def load_document(path: str) -> Mapping[str, Any]:
    """A TOML (or YAML / JSON, by extension) config file as a table."""
    p = Path(path)
    try:
        raw = read_bounded(p, MAX_CONFIG_BYTES)
    except FileTooLarge as exc:
        raise KbsConfigError("config file too large") from exc
    except OSError as exc:
        raise KbsConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except ValueError as exc:  # not a regular file
        raise KbsConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        if p.suffix in (".yaml", ".yml"):
            doc = yaml.load(raw, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
        elif p.suffix == ".json":
            doc = strict_loads(raw)
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        raise KbsConfigError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise KbsConfigError("config file must hold a table")
    return doc
