"""``cdh.toml``, the kernel-command-line fallback and the environment.

Keys follow guest-components' ``CdhConfig`` / image-rs ``ImageConfig``
(current and legacy spellings). Parsing is strict on types; unknown keys are
not an error (upstream ignores them) but are collected in
:attr:`CdhConfig.unknown_keys` and logged as one warning, so a typo does not
silently change behaviour.

Precedence, as upstream:

* ``-c cdh.toml`` given: the file; ``[kbc]`` is required. ``AA_KBC_PARAMS``
  in the environment wins over ``[kbc]`` name/url. If the file has no
  ``[image]`` section, the image settings come from the kernel command line.
* no file: everything from the kernel command line (``agent.aa_kbc_params``,
  else ``offline_fs_kbc``).
* always: ``cdh.kbs_resources=<uri>::<path>,...`` on the kernel command line
  appends credentials (items without ``::`` are skipped with a warning);
  env ``CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS`` overrides the
  registry-auth URI.

Kernel parameters given twice: the first ``agent.aa_kbc_params`` and
``cdh.kbs_resources`` win (upstream looks them up with ``find``), the last of
the image parameters (upstream collects those in a map).

The KBC name and URL are not checked here, as upstream: an unknown name fails
when the hub is built (:class:`cdh.hub.Hub`), an empty ``cc_kbc`` URL at the
first resource request.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from cdh.errors import ConfigError
from cdh.files import read_limited
from coco_common.cli import closest
from image_pull.errors import PolicyRejected
from image_pull.registries_conf import ProxyConfig, RegistryConfig

__all__ = [
    "CDH_KBS_DIR",
    "DEFAULT_AA_SOCKET",
    "DEFAULT_CDH_SOCKET",
    "DEFAULT_IMAGE_WORK_DIR",
    "MAX_CONFIG_BYTES",
    "OCICRYPT_CONFIG_PATH",
    "CdhConfig",
    "CdhImageConfig",
    "Credential",
    "KbcConfig",
    "check_credential_path",
    "describe_unknown",
    "export_environment",
    "load_config",
    "parse_kernel_cmdline",
    "parse_registry_config",
    "write_ocicrypt_config",
]

log = logging.getLogger(__name__)

DEFAULT_CDH_SOCKET = "unix:///run/confidential-containers/cdh.sock"
DEFAULT_AA_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
DEFAULT_IMAGE_WORK_DIR = Path("/run/kata-containers/image/")
#: seconds one PullImage may take (image_pull's default too): a trickling registry must
#: not hold CDH's pull lock forever when the ttRPC caller sets no deadline
DEFAULT_PULL_TIMEOUT = 1800.0
CDH_KBS_DIR = PurePosixPath("/run/confidential-containers/cdh/kbs")
OCICRYPT_CONFIG_PATH = Path("/run/confidential-containers/cdh/ocicrypt_config.json")
MAX_CONFIG_BYTES = 1 << 20
MAX_CMDLINE_BYTES = 64 << 10
#: kernel parameters upstream reads with ``find`` (first occurrence wins)
FIRST_WINS_PARAMS = frozenset({"agent.aa_kbc_params", "cdh.kbs_resources"})


@dataclass(frozen=True)
class KbcConfig:
    name: str  # "cc_kbc" | "offline_fs_kbc"
    url: str = ""
    kbs_cert: str | None = None  # PEM


@dataclass(frozen=True)
class Credential:
    """A resource fetched at start-up and written to ``path``."""

    resource_uri: str
    path: PurePosixPath


@dataclass(frozen=True)
class CdhImageConfig:
    """``[image]``: what CDH's PullImage needs (registry settings already in image_pull's types)."""

    work_dir: Path = DEFAULT_IMAGE_WORK_DIR
    image_security_policy_uri: str | None = None
    image_security_policy: str | None = None
    sigstore_config_uri: str | None = None
    sigstore_config: str | None = None
    authenticated_registry_credentials_uri: str | None = None
    registry_configuration_uri: str | None = None
    registry_config: RegistryConfig | None = None
    max_concurrent_layer_downloads_per_image: int = 3
    extra_root_certificates: tuple[str, ...] = ()
    image_pull_proxy: ProxyConfig | None = None  # image_pull.registries_conf.ProxyConfig
    pull_timeout: float = DEFAULT_PULL_TIMEOUT  # seconds; applies whatever deadline the caller sends


@dataclass(frozen=True)
class CdhConfig:
    kbc: KbcConfig = field(default_factory=lambda: KbcConfig("offline_fs_kbc"))
    socket: str = DEFAULT_CDH_SOCKET
    aa_socket: str = DEFAULT_AA_SOCKET
    credentials: tuple[Credential, ...] = ()
    image: CdhImageConfig = field(default_factory=CdhImageConfig)
    skip_sealed_secret_verification: bool = False
    log_level: str = "info"
    unknown_keys: tuple[str, ...] = ()  # dotted paths, reported as a warning
    source: str = "kernel"  # "file" or "kernel"


# --------------------------------------------------------------------------- helpers


def _str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{where}{key} must be a string")
    return v


def _bool(d: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where}{key} must be a boolean")
    return v


def _table(d: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ConfigError(f"{where}{key} must be a table")
    return v


class _UnknownKey(str):
    """A dotted unknown key that remembers the closest known key of its table."""

    hint: str | None = None

    def described(self) -> str:
        table, _, _ = self.rpartition(".")
        text = f"{self} in [{table}]" if table else f"{self} at the top level"
        return text + (f" (did you mean {self.hint}?)" if self.hint else "")


def _unknown(d: Mapping[str, Any], known: set[str], where: str, out: list[str]) -> None:
    for k in d:
        if k not in known:
            key = _UnknownKey(f"{where}{k}")
            key.hint = closest(k, known)
            out.append(key)


def describe_unknown(keys: Sequence[str]) -> str:
    """``kbc.kbs_certs in [kbc] (did you mean kbs_cert?), ...`` for a warning."""
    return ", ".join(k.described() if isinstance(k, _UnknownKey) else k for k in keys)


def check_credential_path(path: str) -> PurePosixPath:
    """A credential path must be absolute, under ``/run/confidential-containers/cdh/kbs``
    and free of ``.``/``..`` segments (upstream rule) and of control characters."""
    if not path.startswith("/"):
        raise ConfigError(f"credential path {path!r} is not absolute")
    if not path.isprintable():
        raise ConfigError(f"credential path {path!r} contains control characters")
    raw_parts = path.split("/")[1:]
    if any(p in (".", "..") for p in raw_parts):
        raise ConfigError(f"credential path {path!r} contains '.' or '..'")
    p = PurePosixPath(path)
    if p == CDH_KBS_DIR or not p.is_relative_to(CDH_KBS_DIR):
        raise ConfigError(f"credential path {path!r} is not under {CDH_KBS_DIR}")
    return p


def _credentials(raw: Any, out_unknown: list[str]) -> tuple[Credential, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("credentials must be an array of tables")
    creds = []
    for i, c in enumerate(raw):
        where = f"credentials[{i}]."
        if not isinstance(c, dict):
            raise ConfigError(f"credentials[{i}] must be a table")
        _unknown(c, {"resource_uri", "path"}, where, out_unknown)
        uri, path = _str(c, "resource_uri", where), _str(c, "path", where)
        if uri is None or path is None:
            raise ConfigError(f"{where}resource_uri and {where}path are required")
        creds.append(Credential(uri, check_credential_path(path)))
    return tuple(creds)


def _proxy(raw: Mapping[str, Any], where: str, unknown: list[str]) -> ProxyConfig:
    _unknown(raw, {"https_proxy", "http_proxy", "no_proxy"}, where, unknown)
    return ProxyConfig.from_list(
        _str(raw, "https_proxy", where), _str(raw, "http_proxy", where), _str(raw, "no_proxy", where)
    )


_REGISTRY_KEYS = {"prefix", "location", "insecure", "blocked", "mirror"}


def _known_only(raw: Any, known: set[str], where: str, unknown: list[str]) -> Any:
    """``raw`` without its unknown keys (recorded); anything not a table as it is."""
    if not isinstance(raw, dict):
        return raw
    _unknown(raw, known, where, unknown)
    return {k: v for k, v in raw.items() if k in known}


def parse_registry_config(raw: Mapping[str, Any], where: str, unknown: list[str]) -> RegistryConfig:
    """The ``registries.conf`` subset (inline table or a fetched TOML file), parsed by
    image_pull's own rules; unknown keys are reported (upstream ignores them), not refused."""
    doc = _known_only(raw, {"unqualified-search-registries", "registry"}, where, unknown)
    doc.setdefault("unqualified-search-registries", [])  # none unless configured (image-rs)
    regs = doc.get("registry", [])
    if isinstance(regs, list):
        doc["registry"] = []
        for i, r in enumerate(regs):
            entry = _known_only(r, _REGISTRY_KEYS, f"{where}registry[{i}].", unknown)
            mirrors = entry.get("mirror", []) if isinstance(entry, dict) else None
            if isinstance(mirrors, list):
                entry["mirror"] = [
                    _known_only(m, {"location", "insecure"}, f"{where}registry[{i}].mirror[{j}].", unknown)
                    for j, m in enumerate(mirrors)
                ]
            doc["registry"].append(entry)
    try:
        return RegistryConfig.from_mapping(doc)
    except PolicyRejected as exc:
        raise ConfigError(f"{where.rstrip('.') or 'registry configuration'}: {exc}") from exc


_IMAGE_KEYS = {
    "work_dir",
    "image_security_policy_uri",
    "image_security_policy",
    "sigstore_config_uri",
    "sigstore_config",
    "authenticated_registry_credentials_uri",
    "registry_configuration_uri",
    "registry_config",
    "max_concurrent_layer_downloads_per_image",
    "extra_root_certificates",
    "image_pull_proxy",
    "pull_timeout",  # this implementation: seconds for one pull, even when the caller sets no deadline
    "skip_proxy_ips",  # legacy (before 2025-05)
    "nydus",  # legacy (removed 2025-12): accepted and ignored with a warning
}


def _image(raw: Mapping[str, Any], unknown: list[str]) -> CdhImageConfig:
    w = "image."
    _unknown(raw, _IMAGE_KEYS, w, unknown)
    if "nydus" in raw:
        log.warning("[image.nydus] is no longer supported upstream and is ignored")
    work_dir = _str(raw, "work_dir", w)
    mc = raw.get("max_concurrent_layer_downloads_per_image", 3)
    if not isinstance(mc, int) or isinstance(mc, bool) or mc < 1:
        raise ConfigError(f"{w}max_concurrent_layer_downloads_per_image must be a positive integer")
    pt = raw.get("pull_timeout", DEFAULT_PULL_TIMEOUT)
    if not isinstance(pt, int | float) or isinstance(pt, bool) or not 0 < pt <= 86400:
        raise ConfigError(f"{w}pull_timeout must be a number of seconds in (0, 86400]")
    certs = raw.get("extra_root_certificates", [])
    if not isinstance(certs, list) or not all(isinstance(c, str) for c in certs):
        raise ConfigError(f"{w}extra_root_certificates must be an array of PEM strings")
    proxy_raw = raw.get("image_pull_proxy")
    proxy: ProxyConfig | None
    if proxy_raw is None:
        proxy = None
    elif isinstance(proxy_raw, str):  # legacy form: https proxy URL + skip_proxy_ips
        proxy = ProxyConfig.from_list(proxy_raw, None, _str(raw, "skip_proxy_ips", w))
    elif isinstance(proxy_raw, dict):
        proxy = _proxy(proxy_raw, f"{w}image_pull_proxy.", unknown)
    else:
        raise ConfigError(f"{w}image_pull_proxy must be a table or a string")
    rc_raw = _table(raw, "registry_config", w)
    return CdhImageConfig(
        work_dir=Path(work_dir) if work_dir else DEFAULT_IMAGE_WORK_DIR,
        image_security_policy_uri=_str(raw, "image_security_policy_uri", w),
        image_security_policy=_str(raw, "image_security_policy", w),
        sigstore_config_uri=_str(raw, "sigstore_config_uri", w),
        sigstore_config=_str(raw, "sigstore_config", w),
        authenticated_registry_credentials_uri=_str(raw, "authenticated_registry_credentials_uri", w),
        registry_configuration_uri=_str(raw, "registry_configuration_uri", w),
        registry_config=(
            parse_registry_config(rc_raw, f"{w}registry_config.", unknown) if rc_raw is not None else None
        ),
        max_concurrent_layer_downloads_per_image=mc,
        extra_root_certificates=tuple(certs),
        image_pull_proxy=proxy,
        pull_timeout=float(pt),
    )


# --------------------------------------------------------------------------- kernel cmdline


def parse_kernel_cmdline(text: str) -> dict[str, str]:
    """``key=value`` tokens of a kernel command line (bare flags map to ``""``).

    A repeated parameter: the first ``key=value`` wins for
    :data:`FIRST_WINS_PARAMS`, the last one for every other key (as upstream)."""
    out: dict[str, str] = {}
    for tok in text.split():
        k, sep, v = tok.partition("=")
        if k in FIRST_WINS_PARAMS:
            if sep and k not in out:
                out[k] = v
            continue
        out[k] = v
    return out


def _parse_kbc_params(value: str, where: str) -> KbcConfig:
    name, sep, url = value.partition("::")
    if not sep or not name:
        raise ConfigError(f"{where} must look like <kbc name>::<kbs url>")
    return KbcConfig(name=name, url=url)


def _image_from_cmdline(params: Mapping[str, str]) -> CdhImageConfig:
    proxy = None
    if any(k in params for k in ("agent.https_proxy", "agent.http_proxy", "agent.no_proxy")):
        proxy = ProxyConfig.from_list(
            params.get("agent.https_proxy"), params.get("agent.http_proxy"), params.get("agent.no_proxy")
        )
    policy = None
    if params.get("agent.enable_signature_verification", "false").lower() == "true":
        policy = params.get("agent.image_policy_file") or None
    return CdhImageConfig(
        authenticated_registry_credentials_uri=params.get("agent.image_registry_auth") or None,
        image_security_policy_uri=policy,
        image_pull_proxy=proxy,
    )


def _kbs_resources(value: str) -> tuple[Credential, ...]:
    """``<uri>::<path>,...``: an item without ``::`` is skipped with a warning
    (upstream drops it); an item with one must be usable (upstream's start-up
    fails on it too, when it fetches the credentials)."""
    creds = []
    for item in value.split(","):
        if not item:
            continue
        uri, sep, path = item.partition("::")
        if not sep:
            log.warning("cdh.kbs_resources: skipping %r (not <uri>::<path>)", item[:200])
            continue
        if not uri or not path:
            raise ConfigError("cdh.kbs_resources entries must look like <uri>::<path>")
        creds.append(Credential(uri, check_credential_path(path)))
    return tuple(creds)


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_limited(path, limit)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- entry point


def _from_file(
    path: Path, params: Mapping[str, str], env: Mapping[str, str], unknown: list[str]
) -> CdhConfig:
    """``cdh.toml`` (``[image]`` falls back to the kernel command line; ``AA_KBC_PARAMS`` wins)."""
    raw_bytes = _read_limited(path, MAX_CONFIG_BYTES, "config file")
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _unknown(
        raw,
        {"socket", "skip_sealed_secret_verification", "aa", "kbc", "credentials", "image", "log"},
        "",
        unknown,
    )
    kbc_raw = _table(raw, "kbc", "")
    if kbc_raw is None:
        raise ConfigError("config file has no [kbc] section (name is required)")
    _unknown(kbc_raw, {"name", "url", "kbs_cert"}, "kbc.", unknown)
    name = _str(kbc_raw, "name", "kbc.")
    if not name:
        raise ConfigError("kbc.name is required")
    kbc = KbcConfig(name, _str(kbc_raw, "url", "kbc.") or "", _str(kbc_raw, "kbs_cert", "kbc."))
    env_kbc = env.get("AA_KBC_PARAMS")
    if env_kbc:  # a pre-set environment wins over the file (upstream behaviour)
        kbc = replace(_parse_kbc_params(env_kbc, "AA_KBC_PARAMS"), kbs_cert=kbc.kbs_cert)
    aa_raw = _table(raw, "aa", "") or {}
    _unknown(aa_raw, {"aa_socket"}, "aa.", unknown)
    log_raw = _table(raw, "log", "") or {}
    _unknown(log_raw, {"level"}, "log.", unknown)
    image_raw = _table(raw, "image", "")
    image = _image(image_raw, unknown) if image_raw is not None else _image_from_cmdline(params)
    return CdhConfig(
        kbc=kbc,
        socket=_str(raw, "socket", "") or DEFAULT_CDH_SOCKET,
        aa_socket=_str(aa_raw, "aa_socket", "aa.") or DEFAULT_AA_SOCKET,
        credentials=_credentials(raw.get("credentials"), unknown),
        image=image,
        skip_sealed_secret_verification=_bool(raw, "skip_sealed_secret_verification", ""),
        log_level=_str(log_raw, "level", "log.") or "info",
        source="file",
    )


def _from_kernel(params: Mapping[str, str], env: Mapping[str, str]) -> CdhConfig:
    kbc_param = env.get("AA_KBC_PARAMS") or params.get("agent.aa_kbc_params")
    kbc = _parse_kbc_params(kbc_param, "agent.aa_kbc_params") if kbc_param else KbcConfig("offline_fs_kbc")
    return CdhConfig(kbc=kbc, image=_image_from_cmdline(params), source="kernel")


def load_config(
    path: Path | None,
    *,
    cmdline: str | None = None,
    cmdline_path: Path = Path("/proc/cmdline"),
    env: Mapping[str, str] | None = None,
) -> CdhConfig:
    """Build the configuration from ``path`` (or the kernel command line when
    ``None``). ``cmdline`` overrides reading ``cmdline_path``; ``env``
    defaults to :data:`os.environ`."""
    env = os.environ if env is None else env
    if cmdline is None:
        try:
            cmdline = _read_limited(cmdline_path, MAX_CMDLINE_BYTES, "kernel command line").decode(
                errors="replace"
            )
        except ConfigError:
            cmdline = ""
    params = parse_kernel_cmdline(cmdline)
    unknown: list[str] = []
    cfg = _from_file(path, params, env, unknown) if path is not None else _from_kernel(params, env)
    if kbc_resources := params.get("cdh.kbs_resources"):
        cfg = replace(cfg, credentials=cfg.credentials + _kbs_resources(kbc_resources))
    if auth := env.get("CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS"):
        cfg = replace(cfg, image=replace(cfg.image, authenticated_registry_credentials_uri=auth))
    cfg = replace(cfg, unknown_keys=tuple(unknown))
    if unknown:
        log.warning("ignoring unknown configuration keys: %s", describe_unknown(unknown))
    if cfg.skip_sealed_secret_verification:
        log.warning(
            "INSECURE: skip_sealed_secret_verification = true: sealed secrets are accepted WITHOUT "
            "checking their signature"
        )
    return cfg


def write_ocicrypt_config(socket: str, path: Path = OCICRYPT_CONFIG_PATH) -> Path:
    """Write the ocicrypt key-provider config pointing at this CDH and return its path."""
    body = {"key-providers": {"attestation-agent": {"ttrpc": socket}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)
    return path


def export_environment(
    cfg: CdhConfig,
    env: MutableMapping[str, str],
    *,
    ocicrypt_path: Path = OCICRYPT_CONFIG_PATH,
) -> None:
    """Export what upstream CDH exports for its libraries at start-up."""
    env.setdefault("AA_KBC_PARAMS", f"{cfg.kbc.name}::{cfg.kbc.url}")
    env.setdefault("AA_SOCKET", cfg.aa_socket)  # a pre-set one is kept; the KBC's tokens use it
    if cfg.kbc.kbs_cert:
        env["KBS_CERT"] = cfg.kbc.kbs_cert
    if cfg.skip_sealed_secret_verification:
        env["SKIP_SEALED_SECRET_VERIFICATION"] = "true"
    if not env.get("OCICRYPT_KEYPROVIDER_CONFIG"):
        try:
            env["OCICRYPT_KEYPROVIDER_CONFIG"] = str(write_ocicrypt_config(cfg.socket, ocicrypt_path))
        except OSError as exc:
            log.warning("cannot write the ocicrypt key-provider config %s: %s", ocicrypt_path, exc.strerror)
