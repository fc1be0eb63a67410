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

from cdh.errors import CdhConfigError
from cdh.files import read_limited
from coco_common.fields import Fields
from coco_common.files import write_atomic
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


def _fields(table: Any, where: str = "") -> Fields:
    """A reader over one table of cdh.toml: unknown keys are collected (upstream ignores them)."""
    return Fields(table, error=CdhConfigError, where=where)


def _merge(into: Fields, sub: Fields) -> None:
    """``sub`` is done: its unknown keys count as ``into``'s."""
    sub.done()
    into.unknown.extend(sub.unknown)
    into.notes.extend(sub.notes)


def _table(f: Fields, key: str) -> Fields | None:
    """The sub-table ``key`` with cdh.toml's message for a wrong type."""
    if key in f.table and not isinstance(f.table[key], dict):
        raise f.fail(key, "must be a table")
    return f.sub(key)


def describe_unknown(notes: Sequence[str]) -> str:
    """``unknown key kbc.kbs_certs in [kbc] (did you mean kbs_cert?), ...`` for a warning."""
    return ", ".join(notes)


def check_credential_path(path: str) -> PurePosixPath:
    """A credential path must be absolute, under ``/run/confidential-containers/cdh/kbs``
    and free of ``.``/``..`` segments (upstream rule) and of control characters."""
    if not path.startswith("/"):
        raise CdhConfigError(f"credential path {path!r} is not absolute")
    if not path.isprintable():
        raise CdhConfigError(f"credential path {path!r} contains control characters")
    raw_parts = path.split("/")[1:]
    if any(p in (".", "..") for p in raw_parts):
        raise CdhConfigError(f"credential path {path!r} contains '.' or '..'")
    p = PurePosixPath(path)
    if p == CDH_KBS_DIR or not p.is_relative_to(CDH_KBS_DIR):
        raise CdhConfigError(f"credential path {path!r} is not under {CDH_KBS_DIR}")
    return p


def _credentials(f: Fields) -> tuple[Credential, ...]:
    raw = f.get("credentials", list, [])
    creds = []
    for i, c in enumerate(raw):
        where = f"credentials[{i}]"
        if not isinstance(c, dict):
            raise CdhConfigError(f"{where} must be a table")
        cf = _fields(c, where)
        uri, path = cf.str("resource_uri"), cf.str("path")
        if uri is None or path is None:
            raise CdhConfigError(f"{where}.resource_uri and {where}.path are required")
        _merge(f, cf)
        creds.append(Credential(uri, check_credential_path(path)))
    return tuple(creds)


def _proxy(f: Fields) -> ProxyConfig:
    return ProxyConfig.from_list(f.str("https_proxy"), f.str("http_proxy"), f.str("no_proxy"))


def _known_only(parent: Fields, raw: Any, known: set[str], where: str) -> Any:
    """``raw`` without its unknown keys (recorded in ``parent``); a non-table as it is."""
    if not isinstance(raw, dict):
        return raw
    f = _fields(raw, where)
    f.used.update(known)
    _merge(parent, f)
    return {k: v for k, v in raw.items() if k in known}


_REGISTRY_KEYS = {"prefix", "location", "insecure", "blocked", "mirror"}


def parse_registry_config(f: Fields) -> RegistryConfig:
    """The ``registries.conf`` subset (inline table or a fetched TOML file), parsed by
    image_pull's own rules; unknown keys are recorded in ``f`` (upstream ignores them)."""
    known = {"unqualified-search-registries", "registry"}
    f.used.update(known)
    f.done()
    doc = {k: v for k, v in f.table.items() if k in known}
    doc.setdefault("unqualified-search-registries", [])  # none unless configured (image-rs)
    regs = doc.get("registry", [])
    if isinstance(regs, list):
        doc["registry"] = []
        for i, r in enumerate(regs):
            entry = _known_only(f, r, _REGISTRY_KEYS, f.name(f"registry[{i}]"))
            mirrors = entry.get("mirror", []) if isinstance(entry, dict) else None
            if isinstance(mirrors, list):
                entry["mirror"] = [
                    _known_only(f, m, {"location", "insecure"}, f.name(f"registry[{i}].mirror[{j}]"))
                    for j, m in enumerate(mirrors)
                ]
            doc["registry"].append(entry)
    try:
        return RegistryConfig.from_mapping(doc)
    except PolicyRejected as exc:
        raise CdhConfigError(f"{f.where or 'registry configuration'}: {exc}") from exc


def _positive(f: Fields, key: str, default: float, upper: float, what: str, *, whole: bool = False) -> float:
    """A number in (0, upper], an integer with ``whole`` (TOML ``true`` is not 1)."""
    f.used.add(key)
    value = f.table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (whole and not isinstance(value, int))
    ):
        raise f.fail(key, what)
    if not 0 < value <= upper:
        raise f.fail(key, what)
    return float(value)


def _image_proxy(f: Fields) -> ProxyConfig | None:
    raw = f.table.get("image_pull_proxy")
    if raw is None:
        return None
    if isinstance(raw, str):  # legacy form: https proxy URL + skip_proxy_ips
        f.used.add("image_pull_proxy")
        return ProxyConfig.from_list(raw, None, f.str("skip_proxy_ips"))
    if not isinstance(raw, dict):
        raise f.fail("image_pull_proxy", "must be a table or a string")
    sub = f.sub("image_pull_proxy")
    assert sub is not None
    proxy = _proxy(sub)
    sub.done()
    return proxy


def _image(f: Fields) -> CdhImageConfig:
    """``[image]`` (image-rs ``ImageConfig``, current and legacy spellings)."""
    if "nydus" in f.table:  # legacy (removed 2025-12): accepted and ignored with a warning
        f.used.add("nydus")
        log.warning("[image.nydus] is no longer supported upstream and is ignored")
    f.used.add("skip_proxy_ips")  # legacy (before 2025-05), read with a string image_pull_proxy
    work_dir = f.str("work_dir")
    key = "max_concurrent_layer_downloads_per_image"
    mc = int(_positive(f, key, 3, float("inf"), "must be a positive integer", whole=True))
    # this implementation: seconds for one pull, even when the caller sets no deadline
    pt = _positive(
        f, "pull_timeout", DEFAULT_PULL_TIMEOUT, 86400, "must be a number of seconds in (0, 86400]"
    )
    certs = f.get("extra_root_certificates", list, [])
    if not all(isinstance(c, str) for c in certs):
        raise f.fail("extra_root_certificates", "must be an array of PEM strings")
    proxy = _image_proxy(f)
    rc = _table(f, "registry_config")
    image = CdhImageConfig(
        work_dir=Path(work_dir) if work_dir else DEFAULT_IMAGE_WORK_DIR,
        image_security_policy_uri=f.str("image_security_policy_uri"),
        image_security_policy=f.str("image_security_policy"),
        sigstore_config_uri=f.str("sigstore_config_uri"),
        sigstore_config=f.str("sigstore_config"),
        authenticated_registry_credentials_uri=f.str("authenticated_registry_credentials_uri"),
        registry_configuration_uri=f.str("registry_configuration_uri"),
        registry_config=parse_registry_config(rc) if rc is not None else None,
        max_concurrent_layer_downloads_per_image=mc,
        extra_root_certificates=tuple(certs),
        image_pull_proxy=proxy,
        pull_timeout=pt,
    )
    f.done()
    return image


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
        raise CdhConfigError(f"{where} must look like <kbc name>::<kbs url>")
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
            raise CdhConfigError("cdh.kbs_resources entries must look like <uri>::<path>")
        creds.append(Credential(uri, check_credential_path(path)))
    return tuple(creds)


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_limited(path, limit)
    except OSError as exc:
        raise CdhConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- entry point


def _from_file(path: Path, params: Mapping[str, str], env: Mapping[str, str], notes: list[str]) -> CdhConfig:
    """``cdh.toml`` (``[image]`` falls back to the kernel command line; ``AA_KBC_PARAMS`` wins)."""
    raw_bytes = _read_limited(path, MAX_CONFIG_BYTES, "config file")
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CdhConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    f = _fields(raw)
    kf = _table(f, "kbc")
    if kf is None:
        raise CdhConfigError("config file has no [kbc] section (name is required)")
    name = kf.str("name")
    if not name:
        raise CdhConfigError("kbc.name is required")
    kbc = KbcConfig(name, kf.str("url") or "", kf.str("kbs_cert"))
    kf.done()
    env_kbc = env.get("AA_KBC_PARAMS")
    if env_kbc:  # a pre-set environment wins over the file (upstream behaviour)
        kbc = replace(_parse_kbc_params(env_kbc, "AA_KBC_PARAMS"), kbs_cert=kbc.kbs_cert)
    af = _table(f, "aa") or _fields({}, "aa")
    lf = _table(f, "log") or _fields({}, "log")
    imf = _table(f, "image")
    image = _image(imf) if imf is not None else _image_from_cmdline(params)
    cfg = CdhConfig(
        kbc=kbc,
        socket=f.str("socket") or DEFAULT_CDH_SOCKET,
        aa_socket=af.str("aa_socket") or DEFAULT_AA_SOCKET,
        credentials=_credentials(f),
        image=image,
        skip_sealed_secret_verification=bool(f.bool("skip_sealed_secret_verification", False)),
        log_level=lf.str("level") or "info",
        source="file",
    )
    for t in (af, lf, f):
        t.done()
    notes.extend(f.notes)
    return replace(cfg, unknown_keys=tuple(f.unknown))


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
        except CdhConfigError:
            cmdline = ""
    params = parse_kernel_cmdline(cmdline)
    notes: list[str] = []  # one line per unknown key
    cfg = _from_file(path, params, env, notes) if path is not None else _from_kernel(params, env)
    if kbc_resources := params.get("cdh.kbs_resources"):
        cfg = replace(cfg, credentials=cfg.credentials + _kbs_resources(kbc_resources))
    if auth := env.get("CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS"):
        cfg = replace(cfg, image=replace(cfg.image, authenticated_registry_credentials_uri=auth))
    if notes:
        log.warning("ignoring unknown configuration keys: %s", describe_unknown(notes))
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
    write_atomic(path, json.dumps(body).encode(), mode=0o644)  # read by the runtime's ocicrypt
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
