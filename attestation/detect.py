"""Which TEE is this guest, and which attestable devices does it have.

Primary detection follows guest-components' order (``attester/src/lib.rs``):
``tdx`` → ``sgx`` → ``az-tdx-vtpm`` → ``az-snp-vtpm`` → ``snp`` → ``csv`` →
``cca`` → ``se`` → ``tpm`` → ``sample``; the first
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
PRIMARY_ORDER: tuple[str, ...] = (
    "tdx",
    "sgx",
    "az-tdx-vtpm",
    "az-snp-vtpm",
    "snp",
    "csv",
    "cca",
    "se",
    "tpm",
    "sample",
)

TSM_REPORT_DIR = "sys/kernel/config/tsm/report"
_PROVIDER_LIMIT = 64

# tee name -> (module, class) of the attester implementing it
_ATTESTER_CLASSES: dict[str, tuple[str, str]] = {
    "tdx": ("attestation.tdx.attester", "TdxAttester"),
    "snp": ("attestation.snp.attester", "SnpAttester"),
    "sgx": ("attestation.sgx.attester", "SgxAttester"),
    "az-tdx-vtpm": ("attestation.azure.attester", "AzTdxVtpmAttester"),
    "az-snp-vtpm": ("attestation.azure.attester", "AzSnpVtpmAttester"),
    "cca": ("attestation.cca.attester", "CcaAttester"),
    "se": ("attestation.se.attester", "SeAttester"),
    "tpm": ("attestation.tpm.attester", "TpmAttester"),
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
    import tempfile  # only where a TSM report interface exists: ~1 MiB off every AA's idle RSS

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
        return dev.startswith(("unix:", "tcp:")) or plat.path(dev).exists()
    return any(plat.path(f"dev/tpm{i}").exists() for i in range(3))


def _azure_hcl_type(plat: Platform) -> str | None:
    """``"SNP"``/``"TDX"`` when the vTPM holds an Azure HCL report (NV index
    0x01400001), as upstream's ``is_snp_cvm``/``is_tdx_cvm``; ``None`` otherwise."""
    dev = plat.env.get("AA_TPM_DEVICE") or ""
    if not dev.startswith(("unix:", "tcp:")):
        dev = str(plat.path(dev or "dev/tpmrm0"))
        if not Path(dev).exists():
            return None
    try:
        from attestation.azure.hcl import HCL_REPORT_NV_INDEX, HclReport
        from attestation.tpm.device import open_tpm

        with open_tpm(dev) as tpm:
            if tpm.nv_read_public(HCL_REPORT_NV_INDEX) is None:
                return None
            return HclReport.from_bytes(tpm.nv_read(HCL_REPORT_NV_INDEX)).report_type.name
    except Exception as exc:  # any failure means "not an Azure CVM"
        log.debug("no Azure HCL report: %s", exc)
        return None


def _gramine_dcap(plat: Platform) -> bool:
    return (_read_small(plat.path("dev/attestation/attestation_type")) or "").strip() == "dcap"


_DETECTORS: dict[str, Callable[[Platform], bool]] = {
    "tdx": lambda p: _tsm_provider_is(p, "tdx_guest") or p.path("dev/tdx_guest").exists(),
    "sgx": _gramine_dcap,
    "az-tdx-vtpm": lambda p: _azure_hcl_type(p) == "TDX",
    "az-snp-vtpm": lambda p: _azure_hcl_type(p) == "SNP",
    "snp": lambda p: p.path("sys/devices/platform/sev-guest").exists(),
    "csv": lambda p: p.path("dev/csv-guest").exists(),
    "cca": lambda p: p.machine in ("aarch64", "arm64") and _tsm_provider_is(p, "arm_cca_guest"),
    "se": lambda p: (_read_small(p.path("sys/firmware/uv/prot_virt_guest")) or "").strip() == "1",
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
