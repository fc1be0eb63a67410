"""``aa.toml``: the Attestation Agent's configuration, plus upstream's fallback
to ``agent.aa_kbc_params`` when no file is given.

```toml
[token_configs.kbs]
url = "https://kbs.example:8080"          # required when the section exists (checked at use)
cert = "-----BEGIN CERTIFICATE-----..."   # optional PEM, trusted root for the KBS
tee_key_algorithm = "ECDH-ES+A256KW-P256" # default; or ...-P521, RSA-OAEP-256
[token_configs.coco_as]
url = "http://127.0.0.1:8000"
[eventlog_config]
init_pcr = 17
enable_eventlog = false
[log]
level = "info"
```

TOML or JSON (chosen by the file extension; TOML otherwise). Types are checked
strictly (a string where an integer belongs is an error naming the key).
Unknown keys are reported through :attr:`AaConfig.unknown_keys` and a warning,
not rejected, because upstream ignores them and a newer ``aa.toml`` delivered
through initdata must not stop the guest from booting.

As upstream, a KBS URL is not checked here: an unusable one (not http(s),
empty) and a malformed ``agent.aa_kbc_params`` do not stop the agent; the
first ``GetToken("kbs")`` fails instead, with the reason.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.aa.errors import AaConfigError
from coco_common.fields import Fields
from coco_common.files import FileTooLarge, read_bounded
from coco_common.strict_json import strict_loads

__all__ = [
    "DEFAULT_INIT_PCR",
    "MAX_CONFIG_BYTES",
    "TEE_KEY_ALGORITHMS",
    "AaConfig",
    "CocoAsConfig",
    "EventlogConfig",
    "KbsTokenConfig",
    "config_from_kbc_params",
    "load_config",
    "parse_config",
    "read_kbc_params",
    "resolve_config",
]

log = logging.getLogger(__name__)

DEFAULT_INIT_PCR = 17
MAX_CONFIG_BYTES = 1 << 20
TEE_KEY_ALGORITHMS = ("ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256")
DEFAULT_TEE_KEY_ALGORITHM = TEE_KEY_ALGORITHMS[0]
PROC_CMDLINE = Path("/proc/cmdline")
KBC_PARAMS_ENV = "AA_KBC_PARAMS"
KBC_PARAMS_CMDLINE = "agent.aa_kbc_params"


@dataclass(frozen=True)
class KbsTokenConfig:
    url: str
    cert: str | None = None
    tee_key_algorithm: str = DEFAULT_TEE_KEY_ALGORITHM


@dataclass(frozen=True)
class CocoAsConfig:
    url: str


@dataclass(frozen=True)
class EventlogConfig:
    init_pcr: int = DEFAULT_INIT_PCR
    enable_eventlog: bool = False


@dataclass(frozen=True)
class AaConfig:
    kbs: KbsTokenConfig | None = None
    coco_as: CocoAsConfig | None = None
    eventlog: EventlogConfig = field(default_factory=EventlogConfig)
    log_level: str | None = None
    #: dotted names of keys that were present but are not understood
    unknown_keys: tuple[str, ...] = ()


def parse_config(untrusted_doc: Mapping[str, Any]) -> AaConfig:
    """Check a decoded config document and build an :class:`AaConfig`."""
    top = Fields(dict(untrusted_doc), error=AaConfigError, label="aa config")
    kbs = coco_as = None
    tokens = top.sub("token_configs")
    if tokens is not None:
        k = tokens.sub("kbs")
        if k is not None:
            url = k.get("url", str, required=True)  # checked at first use, as upstream
            alg = k.get("tee_key_algorithm", str, DEFAULT_TEE_KEY_ALGORITHM)
            if alg not in TEE_KEY_ALGORITHMS:
                raise k.fail("tee_key_algorithm", f"{alg!r} is not one of " + ", ".join(TEE_KEY_ALGORITHMS))
            cert = k.get("cert", str)
            if cert and "-----BEGIN" not in cert:
                raise k.fail(
                    "cert",
                    "must be the PEM text of the KBS certificate (-----BEGIN CERTIFICATE----- ...), "
                    "not a path",
                )
            kbs = KbsTokenConfig(url.rstrip("/"), cert or None, alg)
            k.done()
        c = tokens.sub("coco_as")
        if c is not None:
            coco_as = CocoAsConfig(c.get("url", str, required=True).rstrip("/"))
            c.done()
        tokens.done()
    eventlog = EventlogConfig()
    e = top.sub("eventlog_config")
    if e is not None:
        pcr = e.get("init_pcr", int, DEFAULT_INIT_PCR)
        if not 0 <= pcr < 24:
            raise e.fail("init_pcr", f"{pcr} is out of range 0..23")
        eventlog = EventlogConfig(pcr, e.get("enable_eventlog", bool, False))
        e.done()
    level = None
    lg = top.sub("log")
    if lg is not None:
        level = lg.get("level", str)
        lg.done()
    top.done()
    for note in top.notes:
        log.warning("aa config: %s: ignored", note)
    return AaConfig(kbs, coco_as, eventlog, level, tuple(sorted(top.unknown)))


def load_config(path: str | Path) -> AaConfig:
    """Read ``aa.toml`` (or ``.json``)."""
    p = Path(path)
    try:
        raw = read_bounded(p, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise AaConfigError(f"aa config: cannot read {p}: {exc.strerror}") from exc
    except FileTooLarge as exc:
        raise AaConfigError(f"aa config: {p} is larger than {MAX_CONFIG_BYTES} bytes") from exc
    except ValueError as exc:  # not a regular file
        raise AaConfigError(f"aa config: {p} is not a regular file") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AaConfigError(f"aa config: {p} is not UTF-8") from exc
    doc: Any
    if p.suffix.lower() == ".json":
        try:
            doc = strict_loads(text)
        except ValueError as exc:
            raise AaConfigError(f"aa config: {p} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise AaConfigError(f"aa config: {p} must hold a JSON object")
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AaConfigError(f"aa config: {p} is not valid TOML: {exc}") from exc
    return parse_config(doc)


def read_kbc_params(
    env: Mapping[str, str] | None = None, cmdline_path: str | Path = PROC_CMDLINE
) -> str | None:
    """``AA_KBC_PARAMS`` from the environment, else ``agent.aa_kbc_params=`` from
    the kernel command line; ``None`` when neither is set."""
    env = os.environ if env is None else env
    value = env.get(KBC_PARAMS_ENV)
    if value is not None:  # set, even empty, wins (upstream: env::var(..).is_ok())
        return value
    try:
        with Path(cmdline_path).open("rb") as f:
            cmdline = f.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    for word in cmdline.split():
        name, sep, val = word.partition("=")
        if sep and name == KBC_PARAMS_CMDLINE:
            return val
    return None


def config_from_kbc_params(params: str | None) -> AaConfig:
    """Upstream's file-less configuration: ``cc_kbc::<url>`` gives a KBS config
    (the URL taken as it is, checked at first use); any other KBC, none, or a
    malformed value (not exactly one ``::``; logged) gives none, and the agent
    still starts (upstream: ``KbsTokenConfig::new().ok()``)."""
    if params is None:
        return AaConfig()
    kbc, sep, url = params.partition("::")
    if not sep or "::" in url:
        log.warning(
            "aa_kbc_params %r is not <kbc>::<url> (exactly one '::'): no KBS token configuration",
            params[:200],
        )
        return AaConfig()
    if kbc != "cc_kbc":
        log.info("aa_kbc_params names %r: no KBS token configuration", kbc[:64])
        return AaConfig()
    return AaConfig(kbs=KbsTokenConfig(url.rstrip("/")))


def resolve_config(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    cmdline_path: str | Path = PROC_CMDLINE,
) -> AaConfig:
    """The config file when given, else the ``aa_kbc_params`` fallback."""
    if path is not None:
        return load_config(path)
    return config_from_kbc_params(read_kbc_params(env, cmdline_path))
