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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from coco_common.cli import closest
from coco_common.strict_json import strict_loads

from .errors import KbsConfigError

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
#: ``[attestation_service.verifier_config]`` sections trustee's verifier crate reads
UPSTREAM_VERIFIER_SECTIONS = ("nvidia_verifier", "tpm_verifier", "snp_verifier", "dcap_verifier")
#: what this KBS serves today (anything else loads, and is named by :func:`startup_problems`)
SERVED_AS_TYPES = ("coco_as_builtin", "coco_as_grpc", "intel_ta")
SERVED_PLUGINS = ("resource", "sample", "external", "pkcs11", "nebula-ca")
SERVED_RVPS = ("BuiltIn", "GrpcRemote")

_warnings: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_warnings", default=None)


def _warn(msg: str) -> None:
    log.warning("config: %s", msg)
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
    #: trustee's ``*_verifier`` sections (``snp_verifier``, ``dcap_verifier`` ...), kept as given
    upstream_verifier_config: Mapping[str, Any] = field(default_factory=dict)
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


def _typed(tbl: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any, where: str) -> Any:
    if key not in tbl:
        return default
    v = tbl[key]
    if typ is int and isinstance(v, bool):
        raise KbsConfigError(f"{where}.{key} must be an integer")
    if not isinstance(v, typ):
        raise KbsConfigError(f"{where}.{key} has the wrong type")
    return v


def _strs(tbl: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = tbl.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise KbsConfigError(f"{where}.{key} must be a list of strings")
    return tuple(v)


def _did_you_mean(key: str, known: set[str]) -> str:
    hint = closest(key, known)
    return f" (did you mean {hint}?)" if hint else ""


def _unused(tbl: Mapping[str, Any], known: set[str], where: str) -> None:
    for k in tbl:
        if k not in known:
            _warn(f"{where}.{k} is not a key this KBS reads: ignored{_did_you_mean(k, known)}")


def _http(tbl: Mapping[str, Any]) -> HttpServerConfig:
    w = "http_server"
    _unused(tbl, set(HttpServerConfig.__dataclass_fields__) | {"sockets"}, w)
    sockets = _strs(tbl, "sockets", w) or ("127.0.0.1:8080",)
    for sock in sockets:
        host, sep, port = sock.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise KbsConfigError(f"http_server.sockets: {sock!r} is not an address:port")
    cfg = HttpServerConfig(
        sockets=sockets,
        insecure_http=_typed(tbl, "insecure_http", bool, False, w),
        private_key=_typed(tbl, "private_key", str, None, w),
        certificate=_typed(tbl, "certificate", str, None, w),
        payload_request_size=_typed(tbl, "payload_request_size", int, 2, w),
        worker_count=_typed(tbl, "worker_count", int, None, w),
        tls_profile=_typed(tbl, "tls_profile", str, "intermediate", w),
        tls_min_version=_typed(tbl, "tls_min_version", str, None, w),
        tls_max_version=_typed(tbl, "tls_max_version", str, None, w),
        tls_ciphers=_typed(tbl, "tls_ciphers", str, None, w),
        tls_groups=_typed(tbl, "tls_groups", str, None, w),
    )
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
    extra = sorted(set(tbl) - allowed)
    if extra:
        raise KbsConfigError(
            f"{where}: unknown field(s) {', '.join(extra)}{_did_you_mean(extra[0], allowed)}"
        )


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
    bj = _table(authn, "bearer_jwt")
    _strict(bj, {"identity_providers"}, "[admin.authentication.bearer_jwt]")
    idps: list[IdentityProvider] = []
    raw_idps = bj.get("identity_providers", [])
    if not isinstance(raw_idps, list):
        raise KbsConfigError("admin.authentication.bearer_jwt.identity_providers must be a list")
    for raw in raw_idps:
        if not isinstance(raw, Mapping):
            raise KbsConfigError("admin.authentication.bearer_jwt.identity_providers entries must be tables")
        _strict(raw, {"issuer", "audience", "public_key_uri", "jwk_set_uri"}, "identity provider")
        vals = {k: raw.get(k) for k in ("issuer", "audience", "public_key_uri", "jwk_set_uri")}
        for k, v in vals.items():
            if not (v is None or isinstance(v, str)):
                raise KbsConfigError(
                    f"admin.authentication.bearer_jwt.identity_providers.{k} must be a string"
                )
        # an entry without a key source, or no entry at all, is refused when the KBS starts
        # (trustee's AdminConfig::validate), not here: see startup_problems
        idps.append(IdentityProvider(**vals))
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
    return AdminConfig(mode=mode, identity_providers=tuple(idps), acls=tuple(acls))


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
    w = "attestation_token"
    if "insecure_key" in tbl:
        # trustee's verifier config has no deny_unknown_fields: the old key is ignored there too
        _warn("attestation_token.insecure_key is ignored (renamed insecure_header_jwk in trustee v0.21)")
    _unused(
        tbl,
        {
            "trusted_certs_paths",
            "trusted_jwk_sets",
            "extra_teekey_paths",
            "insecure_header_jwk",
            "insecure_key",
        },
        w,
    )
    return AttestationTokenConfig(
        trusted_certs_paths=_strs(tbl, "trusted_certs_paths", w),
        trusted_jwk_sets=_strs(tbl, "trusted_jwk_sets", w),
        extra_teekey_paths=_strs(tbl, "extra_teekey_paths", w),
        insecure_header_jwk=_typed(tbl, "insecure_header_jwk", bool, False, w),
    )


_AS_COMMON = {"type", "timeout"}
_AS_KEYS = {
    "coco_as_builtin": {
        "attestation_token_broker",
        "rvps_config",
        "verifier_config",
        "work_dir",
        "storage_type",
    },
    "coco_as_grpc": {"as_addr", "pool_size"},
    "intel_ta": {"base_url", "api_key", "certs_file", "allow_unmatched_policy", "policy_ids"},
}
_BROKER_KEYS = {
    "type",
    "duration_min",
    "issuer_name",
    "developer_name",
    "build_name",
    "profile_name",
    "verbose_token",
    "signer",
    "policy_dir",
}


def _as(tbl: Mapping[str, Any]) -> AttestationServiceConfig:
    w = "attestation_service"
    raw_type = tbl.get("type", "coco_as_builtin")
    if not isinstance(raw_type, str) or raw_type not in AS_TYPES:
        raise KbsConfigError(f"attestation_service.type {raw_type!r} is not one of {', '.join(AS_TYPES)}")
    typ = AS_TYPES[raw_type]
    _unused(tbl, _AS_COMMON | _AS_KEYS[typ], w)
    d = AttestationServiceConfig()
    timeout = _typed(tbl, "timeout", int, 5, w)
    if typ == "coco_as_grpc":
        pool = _typed(tbl, "pool_size", int, 100, w)
        if pool < 1:
            raise KbsConfigError("attestation_service.pool_size must be at least 1")
        return AttestationServiceConfig(
            type=typ,
            timeout_min=timeout,
            as_addr=_typed(tbl, "as_addr", str, "http://127.0.0.1:50004", w),
            pool_size=pool,
        )
    if typ == "intel_ta":
        for k in ("base_url", "api_key", "certs_file"):
            if k not in tbl:
                raise KbsConfigError(f"attestation_service.{k} is required for intel_ta")
        return AttestationServiceConfig(
            type=typ,
            timeout_min=timeout,
            ita_base_url=_typed(tbl, "base_url", str, None, w),
            ita_api_key=_typed(tbl, "api_key", str, None, w),
            ita_certs_file=_typed(tbl, "certs_file", str, None, w),
            ita_allow_unmatched_policy=_typed(tbl, "allow_unmatched_policy", bool, None, w),
            ita_policy_ids=_strs(tbl, "policy_ids", f"{w}.policy_ids"),
        )
    broker = _table(tbl, "attestation_token_broker")
    bw = f"{w}.attestation_token_broker"
    _unused(broker, _BROKER_KEYS, bw)
    if broker.get("type", "Ear") not in ("Ear", "ear"):
        raise KbsConfigError(f"{bw}.type must be Ear (the only token broker trustee v0.21 has)")
    signer = _table(broker, "signer")
    _unused(signer, {"key_path", "cert_path", "cert_url"}, f"{bw}.signer")
    rv = _table(tbl, "rvps_config")
    rvw = f"{w}.rvps_config"
    rvps_type = _typed(rv, "type", str, "BuiltIn", rvw)
    if rvps_type not in ("BuiltIn", "GrpcRemote"):
        raise KbsConfigError(f"{rvw}.type must be BuiltIn or GrpcRemote")
    _unused(
        rv,
        {"type", "address", "storage", "extractors"} if rvps_type == "BuiltIn" else {"type", "address"},
        rvw,
    )
    vc = tbl.get("verifier_config", {})
    if not isinstance(vc, Mapping):
        raise KbsConfigError("attestation_service.verifier_config must be a table")
    ours = {k: v for k, v in vc.items() if k not in UPSTREAM_VERIFIER_SECTIONS}
    theirs = {k: v for k, v in vc.items() if k in UPSTREAM_VERIFIER_SECTIONS}
    for k, v in {**ours, **theirs}.items():
        if not isinstance(v, Mapping):
            raise KbsConfigError(f"attestation_service.verifier_config.{k} must be a table")
    for k in theirs:
        _warn(
            f"attestation_service.verifier_config.{k} (trustee's verifier options) is kept but not applied: "
            "this KBS's verifiers take their options from verifier_config.<tee>"
        )
    ast = tbl.get("storage_type")
    if ast is not None and ast not in STORAGE_TYPES:
        raise KbsConfigError(
            f"attestation_service.storage_type {ast!r} is not one of {', '.join(STORAGE_TYPES)}"
        )
    return AttestationServiceConfig(
        type=typ,
        timeout_min=timeout,
        duration_min=_typed(broker, "duration_min", int, 5, bw),
        issuer_name=_typed(broker, "issuer_name", str, d.issuer_name, bw),
        developer_name=_typed(broker, "developer_name", str, d.developer_name, bw),
        build_name=_typed(broker, "build_name", str, d.build_name, bw),
        profile_name=_typed(broker, "profile_name", str, d.profile_name, bw),
        signer_key_path=_typed(signer, "key_path", str, None, f"{bw}.signer"),
        signer_cert_path=_typed(signer, "cert_path", str, None, f"{bw}.signer"),
        signer_cert_url=_typed(signer, "cert_url", str, None, f"{bw}.signer"),
        verbose_token=_typed(broker, "verbose_token", bool, True, bw),
        verifier_config=ours,
        upstream_verifier_config=theirs,
        rvps_type=rvps_type,
        rvps_address=_typed(rv, "address", str, None, rvw),
        as_storage_type=STORAGE_TYPES[ast] if ast is not None else None,
    )


def _storage_type(v: Any, where: str) -> str:
    if not isinstance(v, str) or v not in STORAGE_TYPES:
        raise KbsConfigError(f"{where} {v!r} is not one of {', '.join(STORAGE_TYPES)}")
    return STORAGE_TYPES[v]


def _storage(tbl: Mapping[str, Any], top_session: Any) -> StorageConfig:
    w = "storage_backend"
    _unused(tbl, {"storage_type", "backends", "session_storage_type", "encryption"}, w)
    st = _storage_type(tbl.get("storage_type", "Memory"), f"{w}.storage_type")
    sst: str | None = None
    if top_session is not None:
        sst = _storage_type(top_session, "session_storage_type")
    elif tbl.get("session_storage_type") is not None:
        # where this KBS used to read it; trustee reads only the top-level key
        _warn("storage_backend.session_storage_type is read for compatibility (trustee: top level only)")
        sst = _storage_type(tbl["session_storage_type"], f"{w}.session_storage_type")
    backends = _table(tbl, "backends")
    bw = f"{w}.backends"
    _unused(backends, {"local_fs", "local_json", "redis", "postgres"}, bw)
    lfs = _table(backends, "local_fs")
    ljs = _table(backends, "local_json")
    rds = _table(backends, "redis")
    pg = _table(backends, "postgres")
    _unused(lfs, {"dir_path"}, f"{bw}.local_fs")
    _unused(ljs, {"file_dir_path"}, f"{bw}.local_json")
    _unused(rds, {"url"}, f"{bw}.redis")
    _unused(pg, {"db", "username", "password", "port", "host"}, f"{bw}.postgres")
    enc = _table(tbl, "encryption")
    d = StorageConfig()
    dp = PostgresConfig()
    port = _typed(pg, "port", int, dp.port, f"{bw}.postgres")
    if not 0 < port < 65536:
        raise KbsConfigError(f"{bw}.postgres.port must be 1..65535")
    return StorageConfig(
        storage_type=st,
        local_fs_dir=_typed(lfs, "dir_path", str, d.local_fs_dir, f"{bw}.local_fs"),
        local_json_dir=_typed(ljs, "file_dir_path", str, d.local_json_dir, f"{bw}.local_json"),
        redis_url=_typed(rds, "url", str, d.redis_url, f"{bw}.redis"),
        postgres=PostgresConfig(
            db=_typed(pg, "db", str, dp.db, f"{bw}.postgres"),
            username=_typed(pg, "username", str, dp.username, f"{bw}.postgres"),
            password=_typed(pg, "password", str, None, f"{bw}.postgres"),
            port=port,
            host=_typed(pg, "host", str, dp.host, f"{bw}.postgres"),
        ),
        backends_given=tuple(
            sorted(k for k in ("local_fs", "local_json", "redis", "postgres") if k in backends)
        ),
        session_storage_type=sst,
        encryption_key_path=_typed(enc, "key_path", str, None, f"{w}.encryption"),
    )


def security_config(tbl: Mapping[str, Any]) -> SecurityConfig:
    """Parse a ``[security]`` table (the KBS config's, or the ``grpc-as`` config's ``security``)."""
    return _security(tbl)


def _security(tbl: Mapping[str, Any]) -> SecurityConfig:
    w = "security"
    _strict(tbl, set(SecurityConfig.__dataclass_fields__), "[security]")
    d = SecurityConfig()
    dev: tuple[str, ...] | None = None
    if "dev_verifiers" in tbl:
        dev = _strs(tbl, "dev_verifiers", w)
        bad = sorted(set(dev) - set(DEV_VERIFIERS))
        if bad:
            raise KbsConfigError(f"security.dev_verifiers: unknown dev verifier(s) {', '.join(bad)}")
    ints = {
        k: _typed(tbl, k, int, getattr(d, k), w)
        for k in ("max_sessions", "max_token_bytes", "max_evidence_bytes", "max_init_data_bytes",
                  "max_claims_depth", "max_claims_items", "policy_workers")
    }  # fmt: skip
    for k, v in ints.items():
        if v < 1:
            raise KbsConfigError(f"security.{k} must be positive")
    timeout = _typed(tbl, "policy_timeout_s", (int, float), d.policy_timeout_s, w)
    if isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise KbsConfigError("security.policy_timeout_s must be in (0, 600]")
    return SecurityConfig(dev_verifiers=dev, policy_timeout_s=float(timeout), **ints)


def _plugin(raw: Any) -> PluginConfig:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise KbsConfigError("plugins: every [[plugins]] entry needs a string name")
    if raw["name"] not in PLUGIN_NAMES:
        raise KbsConfigError(f"plugins.name {raw['name']!r} is not one of {', '.join(PLUGIN_NAMES)}")
    name = PLUGIN_NAMES[raw["name"]]
    opts = {k: v for k, v in raw.items() if k != "name"}
    w = f"plugins.{name}"
    if name == "resource":
        sbt = opts.get("storage_backend_type", "kvstorage")
        if sbt not in ("kvstorage", "aliyun", "aws", "gcp", "vault", "Aliyun", "Aws", "Gcp", "Vault"):
            raise KbsConfigError(f"{w}.storage_backend_type {sbt!r} is not a resource backend trustee has")
    elif name == "sample":
        _typed(opts, "item", str, None, w)
    elif name == "pkcs11":
        for k in ("module", "pin"):
            if not isinstance(opts.get(k), str):
                raise KbsConfigError(f"{w}.{k} is required (a string)")
        _typed(opts, "slot_index", int, 0, w)
        _typed(opts, "lookup_label", str, "", w)
        if opts.get("rsa_mechanism", "RsaPkcsOaep") not in ("RsaPkcsOaep", "RsaPkcsTest"):
            raise KbsConfigError(f"{w}.rsa_mechanism must be RsaPkcsOaep or RsaPkcsTest")
    elif name == "external":
        backends = opts.get("backends", [])
        if not isinstance(backends, list):
            raise KbsConfigError(f"{w}.backends must be a list")
        for b in backends:
            if not isinstance(b, Mapping) or not isinstance(b.get("name"), str):
                raise KbsConfigError(f"{w}.backends entries need a string name")
            if not isinstance(b.get("endpoint"), str):
                raise KbsConfigError(f"{w}.backends.endpoint must be a string")
            _typed(b, "timeout_ms", int, None, f"{w}.backends")
            _typed(b, "ca_cert_path", str, None, f"{w}.backends")
            _typed(b, "tls_mode", str, None, f"{w}.backends")
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
    _strict(tbl, set(CompatibilityConfig.__dataclass_fields__), "[compatibility]")
    return CompatibilityConfig(
        **{k: _typed(tbl, k, bool, True, "compatibility") for k in CompatibilityConfig.__dataclass_fields__}
    )


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


_SECRET_KEYS = frozenset({"password", "ita_api_key", "api_key", "pin"})


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
        elif p.name == "resource" and p.options.get("storage_backend_type", "kvstorage") != "kvstorage":
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
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise KbsConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise KbsConfigError("config file too large")
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
