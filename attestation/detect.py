"""Which TEE is this guest, and which attestable devices does it have.

Primary detection follows guest-components' order (``attester/src/lib.rs``):
``tdx`` → ``snp`` → ``csv`` → ``cca`` → ``tpm`` → ``sample``; the first
platform found *for which an attester is installed here* wins. A platform that
is present but has no attester in this build is skipped with a warning
(upstream likewise only considers attesters compiled in). ``sample`` is the
fallback, with a warning, as upstream does.

Additional devices: ``nvidia`` (through :mod:`attestation.nvidia.attester`,
when importable and it reports devices) and ``sampledevice`` (when
``ENABLE_SAMPLE_DEVICE`` is set).

Everything reads files under an injectable ``root`` so tests can build a fake
``/sys`` and ``/dev``. Platform modules (``attestation.snp``,
``attestation.tdx``, ``attestation.nvidia``) are imported lazily; their absence
is tolerated.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.attester import Attester, DeviceAttester
from attestation.errors import UnsupportedPlatform
from attestation.sample import SampleAttester, SampleDeviceAttester, sample_device_enabled

__all__ = [
    "PRIMARY_ORDER",
    "Platform",
    "detect_devices",
    "detect_primary",
    "detect_primary_tee",
    "make_primary_attester",
    "present_platforms",
]

log = logging.getLogger(__name__)

#: Upstream's detection order for the platforms this project knows about.
PRIMARY_ORDER: tuple[str, ...] = ("tdx", "snp", "csv", "cca", "tpm", "sample")

TSM_REPORT_DIR = "sys/kernel/config/tsm/report"
_PROVIDER_LIMIT = 64

# tee name -> (module, class) of the attester implementing it
_ATTESTER_CLASSES: dict[str, tuple[str, str]] = {
    "tdx": ("attestation.tdx.attester", "TdxAttester"),
    "snp": ("attestation.snp.attester", "SnpAttester"),
}


@dataclass(frozen=True)
class Platform:
    """Where to look: the filesystem root, the environment, the CPU architecture."""

    root: Path = Path("/")
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    machine: str = field(default_factory=platform.machine)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")


def _read_small(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(_PROVIDER_LIMIT).decode("ascii", "replace")
    except OSError:
        return None


def _tsm_provider_is(plat: Platform, provider: str) -> bool:
    """True when the ConfigFS TSM report interface is served by ``provider``.

    On a real configfs, creating a directory under ``report`` makes the kernel
    populate its attributes, ``provider`` among them (what upstream does). A
    plain directory tree (tests) gets no attributes, so existing entries'
    ``provider`` files are consulted too."""
    report = plat.path(TSM_REPORT_DIR)
    if not report.is_dir():
        return False
    with contextlib.suppress(OSError):
        entry = Path(tempfile.mkdtemp(prefix="aa-probe-", dir=report))
        try:
            value = _read_small(entry / "provider")
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()
        if value is not None:
            return value.strip() == provider
    with contextlib.suppress(OSError):
        for child in sorted(report.iterdir()):
            value = _read_small(child / "provider")
            if value is not None and value.strip() == provider:
                return True
    return False


def _tpm_present(plat: Platform) -> bool:
    dev = plat.env.get("AA_TPM_DEVICE")
    if dev:
        return plat.path(dev).exists()
    return any(plat.path(f"dev/tpm{i}").exists() for i in range(3))


_DETECTORS: dict[str, Callable[[Platform], bool]] = {
    "tdx": lambda p: _tsm_provider_is(p, "tdx_guest") or p.path("dev/tdx_guest").exists(),
    "snp": lambda p: p.path("sys/devices/platform/sev-guest").exists(),
    "csv": lambda p: p.path("dev/csv-guest").exists(),
    "cca": lambda p: p.machine in ("aarch64", "arm64") and _tsm_provider_is(p, "arm_cca_guest"),
    "tpm": _tpm_present,
    "sample": lambda p: True,
}


def present_platforms(plat: Platform | None = None) -> list[str]:
    """Every platform whose hardware interface is visible, in detection order
    (always ends with ``sample``)."""
    plat = plat or Platform()
    return [tee for tee in PRIMARY_ORDER if _DETECTORS[tee](plat)]


def _attester_available(tee: str) -> bool:
    if tee == "sample":
        return True
    target = _ATTESTER_CLASSES.get(tee)
    if target is None:
        return False
    try:
        module = importlib.import_module(target[0])
    except ImportError:
        return False
    return hasattr(module, target[1])


def detect_primary_tee(plat: Platform | None = None) -> str:
    """The primary TEE's kbs-types name (``tdx``, ``snp``, ..., or ``sample``)."""
    for tee in present_platforms(plat):
        if _attester_available(tee):
            if tee == "sample":
                log.warning("no TEE platform detected; using the sample attester (it proves nothing)")
            return tee
        log.warning("platform %s detected but no attester for it is installed; skipping it", tee)
    raise AssertionError("unreachable: sample is always present")


def make_primary_attester(tee: str) -> Attester:
    """Construct the attester for ``tee``; raises :class:`UnsupportedPlatform`
    if this installation has none for it."""
    if tee == "sample":
        return SampleAttester()
    target = _ATTESTER_CLASSES.get(tee)
    if target is None:
        raise UnsupportedPlatform(f"no attester for TEE {tee!r} in this build")
    try:
        module = importlib.import_module(target[0])
        cls = getattr(module, target[1])
    except (ImportError, AttributeError) as exc:
        raise UnsupportedPlatform(f"the {tee} attester is not installed") from exc
    attester = cls()
    if not isinstance(attester, Attester):
        raise UnsupportedPlatform(f"{target[0]}.{target[1]} does not implement the Attester protocol")
    return attester


def detect_primary(plat: Platform | None = None) -> Attester:
    """Detect the primary TEE and construct its attester."""
    return make_primary_attester(detect_primary_tee(plat))


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _detect_nvidia() -> DeviceAttester | None:
    try:
        module = importlib.import_module("attestation.nvidia.attester")
    except ImportError as exc:
        log.debug("NVIDIA attester not installed: %s", exc)
        return None
    cls = getattr(module, "NvidiaAttester", None)
    detect = getattr(cls, "detect", None) or getattr(module, "detect", None)
    if detect is None:
        log.warning("attestation.nvidia.attester has no detect(); NVIDIA devices are not probed")
        return None
    try:
        if inspect.iscoroutinefunction(detect):
            found = await detect()
        else:  # NVML calls block: keep them off the event loop
            found = await _maybe_await(await asyncio.to_thread(detect))
    except Exception as exc:  # a broken device (or CC mode off) must not stop the agent
        log.warning("NVIDIA device detection failed: %s", exc)
        return None
    if found is None or found is False:
        return None
    if found is True and cls is not None:
        found = cls()
    if not isinstance(found, DeviceAttester):
        log.warning("NVIDIA detect() returned %s, not a device attester; ignoring it", type(found).__name__)
        return None
    return found


async def detect_devices(
    plat: Platform | None = None, *, probes: Sequence[str] = ("nvidia", "sampledevice")
) -> list[DeviceAttester]:
    """Additional attestable devices, in upstream's order. Slow probes (NVML)
    run here, so callers do this lazily, not before serving."""
    plat = plat or Platform()
    found: list[DeviceAttester] = []
    for name in probes:
        if name == "nvidia":
            nv = await _detect_nvidia()
            if nv is not None:
                found.append(nv)
        elif name == "sampledevice":
            if sample_device_enabled(plat.env):
                found.append(SampleDeviceAttester())
        else:
            raise ValueError(f"unknown device probe {name!r}")
    return found
