"""``kbs-config.toml`` as trustee v0.21 reads it (reference §8), parsed once
into frozen dataclasses. ``[admin]`` is strict (trustee sets
``deny_unknown_fields``); other sections ignore keys we do not use, with a log
line, so trustee's sample configs load unchanged."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coco_common.strict_json import strict_loads

from .errors import ConfigError

__all__ = [
    "AdminConfig",
    "AttestationServiceConfig",
    "AttestationTokenConfig",
    "HttpServerConfig",
    "IdentityProvider",
    "KbsConfig",
    "RoleAcl",
    "SecurityConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
]

log = logging.getLogger(__name__)
MAX_CONFIG_BYTES = 1024 * 1024
ADMIN_MODES = ("InsecureAllowAll", "DenyAll", "AuthenticatedAuthorization")
STORAGE_TYPES = ("Memory", "LocalFs", "LocalJson", "Redis")


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


@dataclass(frozen=True)
class StorageConfig:
    storage_type: str = "Memory"
    local_fs_dir: str = "/opt/confidential-containers/storage/local_fs"
    redis_url: str = "redis://127.0.0.1:6379"
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
class KbsConfig:
    http_server: HttpServerConfig
    admin: AdminConfig
    attestation_token: AttestationTokenConfig = field(default_factory=AttestationTokenConfig)
    attestation_service: AttestationServiceConfig = field(default_factory=AttestationServiceConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    plugins: tuple[str, ...] = ()
    base_dir: str = "."
    security: SecurityConfig = field(default_factory=SecurityConfig)


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return v


def _typed(tbl: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any, where: str) -> Any:
    if key not in tbl:
        return default
    v = tbl[key]
    if typ is int and isinstance(v, bool):
        raise ConfigError(f"{where}.{key} must be an integer")
    if not isinstance(v, typ):
        raise ConfigError(f"{where}.{key} has the wrong type")
    return v


def _strs(tbl: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = tbl.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return tuple(v)


def _unused(tbl: Mapping[str, Any], known: set[str], where: str) -> None:
    for k in tbl:
        if k not in known:
            log.info("config: %s.%s is not used by this KBS", where, k)


def _http(tbl: Mapping[str, Any]) -> HttpServerConfig:
    w = "http_server"
    _unused(tbl, set(HttpServerConfig.__dataclass_fields__) | {"sockets"}, w)
    sockets = _strs(tbl, "sockets", w) or ("127.0.0.1:8080",)
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
    )
    if not cfg.insecure_http and not (cfg.private_key and cfg.certificate):
        raise ConfigError("http_server: private_key and certificate are required unless insecure_http = true")
    if cfg.tls_profile not in ("old", "intermediate", "modern", "custom"):
        raise ConfigError("http_server.tls_profile must be old, intermediate, modern or custom")
    if not 0 < cfg.payload_request_size <= 1024:
        raise ConfigError("http_server.payload_request_size must be 1..1024 MiB")
    return cfg


def _strict(tbl: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(tbl) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")


def _admin(tbl: Mapping[str, Any]) -> AdminConfig:
    if "type" in tbl or "auth_public_key" in tbl or "insecure_api" in tbl:
        return _legacy_admin(tbl)
    _strict(tbl, {"authorization_mode", "authentication", "authorization"}, "[admin]")
    if "authorization_mode" not in tbl:
        # trustee defaults to InsecureAllowAll here; this KBS fails closed and opens only when asked
        log.warning("[admin] has no authorization_mode: the admin API is disabled (DenyAll)")
    mode = tbl.get("authorization_mode", "DenyAll")
    if mode not in ADMIN_MODES:
        raise ConfigError(f"[admin] authorization_mode must be one of {', '.join(ADMIN_MODES)}")
    if mode != "AuthenticatedAuthorization":
        return AdminConfig(mode=mode)
    authn = _table(tbl, "authentication")
    authz = _table(tbl, "authorization")
    _strict(authn, {"bearer_jwt"}, "[admin.authentication]")
    _strict(authz, {"regex_acl"}, "[admin.authorization]")
    bj = _table(authn, "bearer_jwt")
    _strict(bj, {"identity_providers"}, "[admin.authentication.bearer_jwt]")
    idps: list[IdentityProvider] = []
    for raw in bj.get("identity_providers", []):
        if not isinstance(raw, Mapping):
            raise ConfigError("identity_providers entries must be tables")
        _strict(raw, {"issuer", "audience", "public_key_uri", "jwk_set_uri"}, "identity provider")
        vals = {k: raw.get(k) for k in ("issuer", "audience", "public_key_uri", "jwk_set_uri")}
        if not all(v is None or isinstance(v, str) for v in vals.values()):
            raise ConfigError("identity provider fields must be strings")
        if not vals["public_key_uri"] and not vals["jwk_set_uri"]:
            raise ConfigError("identity provider needs public_key_uri or jwk_set_uri")
        idps.append(IdentityProvider(**vals))
    if not idps:
        raise ConfigError("AuthenticatedAuthorization needs at least one identity provider")
    ra = _table(authz, "regex_acl")
    _strict(ra, {"acls"}, "[admin.authorization.regex_acl]")
    acls: list[RoleAcl] = []
    for raw in ra.get("acls", []):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("role"), str):
            raise ConfigError("acls entries need a string role")
        _strict(raw, {"role", "allowed_endpoints"}, "acl")
        ep = raw.get("allowed_endpoints")
        if not isinstance(ep, str) or not ep.startswith("^/kbs") or not ep.endswith("$"):
            raise ConfigError("allowed_endpoints must be a regex anchored as ^/kbs...$")
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
            raise ConfigError("[[admin.personas]] needs id and public_key_path")
        if not isinstance(raw.get("public_key_path"), str):
            raise ConfigError("[[admin.personas]] needs id and public_key_path")
        personas.append(LegacyPersona(raw["id"], raw["public_key_path"]))
    acls = tuple(
        RoleAcl(str(r.get("id")), str(r.get("allowed_endpoints")))
        for r in tbl.get("roles", []) or []
        if isinstance(r, Mapping)
    )
    if not personas:
        raise ConfigError("legacy [admin] needs auth_public_key or personas")
    return AdminConfig(mode="Legacy", personas=tuple(personas), acls=acls)


def _token(tbl: Mapping[str, Any]) -> AttestationTokenConfig:
    w = "attestation_token"
    if "insecure_key" in tbl:
        raise ConfigError("attestation_token.insecure_key was renamed insecure_header_jwk in trustee v0.21")
    _unused(tbl, {"trusted_certs_paths", "trusted_jwk_sets", "extra_teekey_paths", "insecure_header_jwk"}, w)
    return AttestationTokenConfig(
        trusted_certs_paths=_strs(tbl, "trusted_certs_paths", w),
        trusted_jwk_sets=_strs(tbl, "trusted_jwk_sets", w),
        extra_teekey_paths=_strs(tbl, "extra_teekey_paths", w),
        insecure_header_jwk=_typed(tbl, "insecure_header_jwk", bool, False, w),
    )


def _as(tbl: Mapping[str, Any]) -> AttestationServiceConfig:
    w = "attestation_service"
    typ = tbl.get("type", "coco_as_builtin")
    if typ != "coco_as_builtin":
        raise ConfigError(f"attestation_service.type {typ!r} is not supported (coco_as_builtin only)")
    broker = _table(tbl, "attestation_token_broker")
    signer = _table(broker, "signer")
    vc = tbl.get("verifier_config", {})
    if not isinstance(vc, Mapping):
        raise ConfigError("attestation_service.verifier_config must be a table")
    d = AttestationServiceConfig()
    return AttestationServiceConfig(
        type=typ,
        timeout_min=_typed(tbl, "timeout", int, 5, w),
        duration_min=_typed(broker, "duration_min", int, 5, w),
        issuer_name=_typed(broker, "issuer_name", str, d.issuer_name, w),
        developer_name=_typed(broker, "developer_name", str, d.developer_name, w),
        build_name=_typed(broker, "build_name", str, d.build_name, w),
        profile_name=_typed(broker, "profile_name", str, d.profile_name, w),
        signer_key_path=_typed(signer, "key_path", str, None, w),
        signer_cert_path=_typed(signer, "cert_path", str, None, w),
        verbose_token=_typed(broker, "verbose_token", bool, True, w),
        verifier_config=dict(vc),
    )


def _storage(tbl: Mapping[str, Any]) -> StorageConfig:
    w = "storage_backend"
    st = tbl.get("storage_type", "Memory")
    sst = tbl.get("session_storage_type")
    for v in (st, sst):
        if v is not None and v not in STORAGE_TYPES:
            raise ConfigError(f"storage_backend type {v!r} is not supported ({', '.join(STORAGE_TYPES)})")
    backends = _table(tbl, "backends")
    lfs = _table(backends, "local_fs") or _table(backends, "local_json")
    rds = _table(backends, "redis")
    enc = _table(tbl, "encryption")
    d = StorageConfig()
    return StorageConfig(
        storage_type=st,
        local_fs_dir=_typed(lfs, "dir_path", str, d.local_fs_dir, w),
        redis_url=_typed(rds, "url", str, d.redis_url, w),
        session_storage_type=sst,
        encryption_key_path=_typed(enc, "key_path", str, None, w),
    )


def _security(tbl: Mapping[str, Any]) -> SecurityConfig:
    w = "security"
    _strict(tbl, set(SecurityConfig.__dataclass_fields__), "[security]")
    d = SecurityConfig()
    dev: tuple[str, ...] | None = None
    if "dev_verifiers" in tbl:
        dev = _strs(tbl, "dev_verifiers", w)
        bad = sorted(set(dev) - set(DEV_VERIFIERS))
        if bad:
            raise ConfigError(f"security.dev_verifiers: unknown dev verifier(s) {', '.join(bad)}")
    ints = {
        k: _typed(tbl, k, int, getattr(d, k), w)
        for k in ("max_sessions", "max_token_bytes", "max_evidence_bytes", "max_init_data_bytes",
                  "max_claims_depth", "max_claims_items", "policy_workers")
    }  # fmt: skip
    for k, v in ints.items():
        if v < 1:
            raise ConfigError(f"security.{k} must be positive")
    timeout = _typed(tbl, "policy_timeout_s", (int, float), d.policy_timeout_s, w)
    if isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise ConfigError("security.policy_timeout_s must be in (0, 600]")
    return SecurityConfig(dev_verifiers=dev, policy_timeout_s=float(timeout), **ints)


def parse_config(doc: Mapping[str, Any], base_dir: str = ".") -> KbsConfig:
    for required in ("http_server", "admin"):
        if required not in doc:
            raise ConfigError(f"the [{required}] section is required")
    _unused(
        doc,
        {
            "http_server",
            "admin",
            "attestation_token",
            "attestation_service",
            "storage_backend",
            "plugins",
            "security",
        },
        "config",
    )
    plugins: list[str] = []
    for p in doc.get("plugins", []) or []:
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
            raise ConfigError("[[plugins]] entries need a name")
        if p["name"] != "resource":
            raise ConfigError(f"plugin {p['name']!r} is not supported (resource only)")
        if p.get("storage_backend_type", "kvstorage") != "kvstorage":
            raise ConfigError("resource plugin: only storage_backend_type = kvstorage is supported")
        plugins.append(p["name"])
    return KbsConfig(
        http_server=_http(_table(doc, "http_server")),
        admin=_admin(_table(doc, "admin")),
        attestation_token=_token(_table(doc, "attestation_token")),
        attestation_service=_as(_table(doc, "attestation_service")),
        storage=_storage(_table(doc, "storage_backend")),
        plugins=tuple(plugins),
        base_dir=base_dir,
        security=_security(_table(doc, "security")),
    )


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


def load_config(path: str) -> KbsConfig:
    """Read a TOML (or YAML / JSON, by extension) config file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("config file too large")
    try:
        if p.suffix in (".yaml", ".yml"):
            doc = yaml.load(raw, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
        elif p.suffix == ".json":
            doc = strict_loads(raw)
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ConfigError("config file must hold a table")
    return parse_config(doc, str(p.parent))
