"""Which TEE is this guest, and which attestable devices does it have.

Primary detection follows guest-components' order (``attester/src/lib.rs``):
``tdx`` → ``sgx`` → ``az-tdx-vtpm`` → ``az-snp-vtpm`` → ``snp`` → ``csv`` →
``cca`` → ``se`` → ``tpm`` → ``sample``; the first platform found that has an
attester in :data:`ATTESTERS` wins (``csv`` has none: a CSV guest is skipped
with a warning, as upstream considers only the attesters compiled in).
``sample`` is the fallback, with a warning, as upstream does.

Additional devices (:data:`DEVICE_PROBES`): ``nvidia`` (NVML reports GPUs
with CC on) and ``sampledevice`` (when ``ENABLE_SAMPLE_DEVICE`` is set).

Everything reads files under an injectable :class:`HostView` so tests can
build a fake ``/sys`` and ``/dev``. The registries' factories import their
platform module on call, so the AA loads only the TEE it runs on; a factory
never hides an ImportError of this project's modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from attestation.attester import Attester, DeviceAttester
from attestation.errors import AttestationError, UnsupportedPlatform
from attestation.sample import SampleAttester, SampleDeviceAttester, sample_device_enabled

__all__ = [
    "ATTESTERS",
    "DEVICE_PROBES",
    "PRIMARY_ORDER",
    "HostView",
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


@dataclass(frozen=True)
class HostView:
    """Where to look: the filesystem root, the environment, the CPU architecture."""

    root: Path = Path("/")
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    machine: str = field(default_factory=platform.machine)
    #: what one detection pass found out already (the vTPM's HCL report type)
    _seen: dict[str, str | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")


def _one_pass(plat: HostView | None) -> HostView:
    """A view for one detection pass: a probe's answer is kept for the pass only
    (between passes the platform may change, e.g. an NV index defined)."""
    return replace(plat) if plat is not None else HostView()


def _read_small(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(_PROVIDER_LIMIT).decode("ascii", "replace")
    except OSError:
        return None


def _tsm_provider_is(plat: HostView, provider: str) -> bool:
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


def _tpm_present(plat: HostView) -> bool:
    dev = plat.env.get("AA_TPM_DEVICE")
    if dev:
        return dev.startswith(("unix:", "tcp:")) or plat.path(dev).exists()
    return any(plat.path(f"dev/tpm{i}").exists() for i in range(3))


def _azure_hcl_type(plat: HostView) -> str | None:
    """``"SNP"``/``"TDX"`` when the vTPM holds an Azure HCL report (NV index
    0x01400001), as upstream's ``is_snp_cvm``/``is_tdx_cvm``; ``None`` otherwise.
    Both Azure probes ask; the vTPM is opened once a pass."""
    if "azure-hcl" not in plat._seen:
        plat._seen["azure-hcl"] = _read_azure_hcl_type(plat)
    return plat._seen["azure-hcl"]


def _read_azure_hcl_type(plat: HostView) -> str | None:
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
    except (AttestationError, OSError) as exc:  # no readable HCL report: not an Azure CVM
        log.debug("no Azure HCL report: %s", exc)
        return None


def _gramine_dcap(plat: HostView) -> bool:
    return (_read_small(plat.path("dev/attestation/attestation_type")) or "").strip() == "dcap"


_DETECTORS: dict[str, Callable[[HostView], bool]] = {
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


def present_platforms(plat: HostView | None = None) -> list[str]:
    """Every platform whose hardware interface is visible, in detection order
    (always ends with ``sample``)."""
    plat = _one_pass(plat)
    return [tee for tee in PRIMARY_ORDER if _DETECTORS[tee](plat)]


def _tdx() -> Attester:
    from attestation.tdx.attester import TdxAttester

    return TdxAttester()


def _snp() -> Attester:
    from attestation.snp.attester import SnpAttester

    return SnpAttester()


def _sgx() -> Attester:
    from attestation.sgx.attester import SgxAttester

    return SgxAttester()


def _az_tdx_vtpm() -> Attester:
    from attestation.azure.attester import AzTdxVtpmAttester

    return AzTdxVtpmAttester()


def _az_snp_vtpm() -> Attester:
    from attestation.azure.attester import AzSnpVtpmAttester

    return AzSnpVtpmAttester()


def _cca() -> Attester:
    from attestation.cca.attester import CcaAttester

    return CcaAttester()


def _se() -> Attester:
    from attestation.se.attester import SeAttester

    return SeAttester()


def _tpm() -> Attester:
    from attestation.tpm.attester import TpmAttester

    return TpmAttester()


#: TEE name -> factory of its attester. ``csv`` has no attester (upstream's
#: needs Hygon's ioctl, which no public vector or emulator exercises).
ATTESTERS: dict[str, Callable[[], Attester]] = {
    "tdx": _tdx,
    "sgx": _sgx,
    "az-tdx-vtpm": _az_tdx_vtpm,
    "az-snp-vtpm": _az_snp_vtpm,
    "snp": _snp,
    "cca": _cca,
    "se": _se,
    "tpm": _tpm,
    "sample": SampleAttester,
}


def detect_primary_tee(plat: HostView | None = None) -> str:
    """The primary TEE's kbs-types name (``tdx``, ``snp``, ..., or ``sample``).
    Probes in order and stops at the first match: the later probes (a TSM
    report directory made, the vTPM opened) are not run for nothing."""
    plat = _one_pass(plat)
    for tee in PRIMARY_ORDER:
        if not _DETECTORS[tee](plat):
            continue
        if tee in ATTESTERS:
            if tee == "sample":
                log.warning("no TEE platform detected; using the sample attester (it proves nothing)")
            return tee
        log.warning("platform %s detected but no attester for it exists here; skipping it", tee)
    raise AssertionError("unreachable: sample is always present")


def make_primary_attester(tee: str) -> Attester:
    """Construct the attester for ``tee``; raises :class:`UnsupportedPlatform`
    when there is none for it."""
    factory = ATTESTERS.get(tee)
    if factory is None:
        raise UnsupportedPlatform(f"no attester for TEE {tee!r}")
    return factory()


def detect_primary(plat: HostView | None = None) -> Attester:
    """Detect the primary TEE and construct its attester."""
    return make_primary_attester(detect_primary_tee(plat))


def _nvidia(plat: HostView) -> DeviceAttester | None:
    """NVIDIA GPUs with CC on; ``None`` without NVML (pynvml), a GPU, or CC mode."""
    from attestation.nvidia.attester import NvidiaAttester
    from attestation.nvidia.errors import CcModeDisabled

    try:
        return NvidiaAttester.detect()
    except CcModeDisabled as exc:
        log.warning("NVIDIA GPUs found but not attestable: %s", exc)
        return None


def _sampledevice(plat: HostView) -> DeviceAttester | None:
    return SampleDeviceAttester() if sample_device_enabled(plat.env) else None


#: device name -> probe (blocking: NVML calls; run off the event loop).
DEVICE_PROBES: dict[str, Callable[[HostView], DeviceAttester | None]] = {
    "nvidia": _nvidia,
    "sampledevice": _sampledevice,
}


async def detect_devices(
    plat: HostView | None = None, *, probes: Sequence[str] = ("nvidia", "sampledevice")
) -> list[DeviceAttester]:
    """Additional attestable devices, in upstream's order. Slow probes (NVML)
    run here, so callers do this lazily, not before serving. A device whose
    probe fails (a typed attestation error) is logged and left out: a broken
    GPU must not stop the agent."""
    plat = plat or HostView()
    found: list[DeviceAttester] = []
    for name in probes:
        probe = DEVICE_PROBES.get(name)
        if probe is None:
            raise ValueError(f"unknown device probe {name!r}")
        try:
            device = await asyncio.to_thread(probe, plat)
        except AttestationError as exc:
            log.warning("%s device detection failed: %s", name, exc)
            continue
        if device is not None:
            found.append(device)
    return found
