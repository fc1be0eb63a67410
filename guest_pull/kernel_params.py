"""Kernel / agent parameters that matter to CoCo, parsed in one place.

Read by kata-agent (``kata:src/agent/src/config.rs``): ``agent.guest_components_procs``,
``agent.guest_components_rest_api``, ``agent.cdh_api_timeout``, ``agent.image_pull_timeout``,
``agent.launch_process_timeout``, ``agent.secure_storage_integrity``, ``agent.https_proxy``,
``agent.no_proxy``. Read by AA/CDH/image-rs from ``/proc/cmdline``: ``agent.aa_kbc_params``,
``agent.image_registry_auth``, ``agent.enable_signature_verification``,
``agent.image_policy_file``, ``agent.http_proxy``, ``cdh.kbs_resources``.

Values may be double-quoted (``agent.x="a b"``). A later occurrence overrides
an earlier one, as the agent's parser does. Unknown ``agent.*`` keys are kept in
:attr:`KernelParams.unknown` (the agent has many more parameters than CoCo uses).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from coco_common.files import read_bounded
from guest_pull.errors import KernelParamError

__all__ = [
    "GUEST_COMPONENTS_PROCS",
    "GUEST_COMPONENTS_REST_API",
    "KernelParams",
    "parse_kernel_params",
    "read_kernel_params",
]

#: level order of ``agent.guest_components_procs``
GUEST_COMPONENTS_PROCS = ("none", "attestation-agent", "confidential-data-hub", "api-server-rest")
GUEST_COMPONENTS_REST_API = ("all", "attestation", "resource")
MAX_CMDLINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class KernelParams:
    aa_kbc_params: str | None = None
    image_registry_auth: str | None = None
    enable_signature_verification: bool | None = None
    image_policy_file: str | None = None
    guest_components_procs: str = "api-server-rest"
    guest_components_rest_api: str = "resource"
    cdh_api_timeout: int = 50
    image_pull_timeout: int = 1200
    launch_process_timeout: int = 6
    secure_storage_integrity: bool = True
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None
    cdh_kbs_resources: str | None = None
    unknown: tuple[str, ...] = ()

    @property
    def guest_components_level(self) -> int:
        """0 none … 3 api-server-rest: which components kata-agent launches."""
        return GUEST_COMPONENTS_PROCS.index(self.guest_components_procs)

    def kbs_url(self) -> str | None:
        """The KBS URL of ``agent.aa_kbc_params=cc_kbc::<url>``, else ``None``."""
        if self.aa_kbc_params is None:
            return None
        kbc, sep, url = self.aa_kbc_params.partition("::")
        return url if sep and kbc == "cc_kbc" and url else None


def _bool(name: str, value: str | None) -> bool:
    if value is None:  # a bare flag means true
        return True
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise KernelParamError(f"{name}: {value!r} is not a boolean")


def _seconds(name: str, value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise KernelParamError(f"{name}: {value!r} is not a number of seconds")
    n = int(value)
    if not 0 < n <= 86400 * 7:
        raise KernelParamError(f"{name}: {n} is out of range")
    return n


def _choice(name: str, value: str | None, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise KernelParamError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def parse_kernel_params(cmdline: str) -> KernelParams:
    """Parse a kernel command line (``/proc/cmdline`` text)."""
    if len(cmdline) > MAX_CMDLINE_BYTES:
        raise KernelParamError("kernel command line is too long")
    try:
        words = shlex.split(cmdline, posix=True)
    except ValueError as exc:
        raise KernelParamError(f"kernel command line: {exc}") from exc
    fields: dict[str, object] = {}
    unknown: list[str] = []
    strings = {
        "agent.aa_kbc_params": "aa_kbc_params",
        "agent.image_registry_auth": "image_registry_auth",
        "agent.image_policy_file": "image_policy_file",
        "agent.https_proxy": "https_proxy",
        "agent.http_proxy": "http_proxy",
        "agent.no_proxy": "no_proxy",
        "cdh.kbs_resources": "cdh_kbs_resources",
    }
    for word in words:
        name, sep, raw = word.partition("=")
        value = raw if sep else None
        if name in strings:
            fields[strings[name]] = value or ""
        elif name == "agent.enable_signature_verification":
            fields["enable_signature_verification"] = _bool(name, value)
        elif name == "agent.secure_storage_integrity":
            fields["secure_storage_integrity"] = _bool(name, value)
        elif name == "agent.guest_components_procs":
            fields["guest_components_procs"] = _choice(name, value, GUEST_COMPONENTS_PROCS)
        elif name == "agent.guest_components_rest_api":
            fields["guest_components_rest_api"] = _choice(name, value, GUEST_COMPONENTS_REST_API)
        elif name in ("agent.cdh_api_timeout", "agent.image_pull_timeout", "agent.launch_process_timeout"):
            fields[name.removeprefix("agent.")] = _seconds(name, value)
        elif name.startswith(("agent.", "cdh.")):
            unknown.append(name)
    return KernelParams(**fields, unknown=tuple(dict.fromkeys(unknown)))  # type: ignore[arg-type]


def read_kernel_params(path: str | Path = "/proc/cmdline") -> KernelParams:
    try:
        raw = read_bounded(path, MAX_CMDLINE_BYTES)
    except OSError as exc:
        raise KernelParamError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # larger than any kernel's command line, or not a regular file
        raise KernelParamError(str(exc)) from exc
    return parse_kernel_params(raw.decode("utf-8", "replace"))
