"""NVML behind a small Protocol, so collection can be tested without a GPU.

:class:`PynvmlBackend` talks to the real library through ``pynvml``
(nvidia-ml-py). Tests inject a fake that serves recorded reports.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from attestation.nvidia.errors import NvidiaUnavailable, NvmlCallError

__all__ = [
    "ARCH_NAMES",
    "ConfComputeState",
    "NvmlBackend",
    "PynvmlBackend",
]

#: NVML_DEVICE_ARCH_* -> the evidence "arch" string.
ARCH_NAMES = {9: "HOPPER", 10: "BLACKWELL"}


@dataclass(frozen=True)
class ConfComputeState:
    """``nvmlSystemGetConfComputeState``: environment 0 unavailable, 1 sim, 2 prod."""

    environment: int
    cc_feature: bool
    dev_tools_mode: bool


@runtime_checkable
class NvmlBackend(Protocol):
    """The NVML calls the attester needs. Methods are blocking."""

    def init(self) -> None:
        """Load and initialise NVML; raise UnsupportedPlatform when it is not installed."""
        ...

    def shutdown(self) -> None: ...

    def device_count(self) -> int: ...

    def cc_state(self) -> ConfComputeState: ...

    def device_arch(self, index: int) -> int:
        """NVML_DEVICE_ARCH_* value."""
        ...

    def device_uuid(self, index: int) -> str: ...

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        """The device's SPDM report for a 32-byte nonce."""
        ...

    def attestation_cert_chain(self, index: int) -> bytes:
        """The PEM attestation certificate chain (leaf first)."""
        ...

    def driver_version(self) -> str: ...

    def gpus_ready_state(self) -> bool: ...

    def set_gpus_ready_state(self, ready: bool) -> None: ...


def _buf(arr: Any, size: int, what: str) -> bytes:
    cap = ctypes.sizeof(arr)
    if size <= 0 or size > cap:
        raise NvmlCallError(f"NVML returned an implausible {what} size {size}")
    return bytes(arr)[:size]


class PynvmlBackend:
    """The real NVML via nvidia-ml-py (imported lazily)."""

    def __init__(self) -> None:
        self._nv: Any = None

    def _lib(self) -> Any:
        if self._nv is None:
            raise NvmlCallError("NVML is not initialised")
        return self._nv

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        nv = self._lib()
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            raise NvmlCallError(f"NVML {what} failed: {exc}") from exc

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvidiaUnavailable("no device: nvidia-ml-py is not installed") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvidiaUnavailable(f"no device: NVML unavailable ({exc})") from exc
        self._nv = pynvml

    def shutdown(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            finally:
                self._nv = None

    def device_count(self) -> int:
        nv = self._lib()
        return int(self._call("device count", nv.nvmlDeviceGetCount))

    def _handle(self, index: int) -> Any:
        nv = self._lib()
        return self._call("device handle", nv.nvmlDeviceGetHandleByIndex, index)

    def cc_state(self) -> ConfComputeState:
        nv = self._lib()
        st = self._call("confidential-compute state", nv.nvmlSystemGetConfComputeState)
        return ConfComputeState(int(st.environment), bool(st.ccFeature), bool(st.devToolsMode))

    def device_arch(self, index: int) -> int:
        nv = self._lib()
        return int(self._call("architecture", nv.nvmlDeviceGetArchitecture, self._handle(index)))

    def device_uuid(self, index: int) -> str:
        nv = self._lib()
        uuid = self._call("UUID", nv.nvmlDeviceGetUUID, self._handle(index))
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        nv = self._lib()
        rep = self._call(
            "attestation report", nv.nvmlDeviceGetConfComputeGpuAttestationReport, self._handle(index), nonce
        )
        return _buf(rep.attestationReport, int(rep.attestationReportSize), "attestation report")

    def attestation_cert_chain(self, index: int) -> bytes:
        nv = self._lib()
        cert = self._call("certificate chain", nv.nvmlDeviceGetConfComputeGpuCertificate, self._handle(index))
        return _buf(cert.attestationCertChain, int(cert.attestationCertChainSize), "certificate chain")

    def driver_version(self) -> str:
        nv = self._lib()
        v = self._call("driver version", nv.nvmlSystemGetDriverVersion)
        return v.decode() if isinstance(v, bytes) else str(v)

    def gpus_ready_state(self) -> bool:
        nv = self._lib()
        return bool(self._call("ready state", nv.nvmlSystemGetConfComputeGpusReadyState))

    def set_gpus_ready_state(self, ready: bool) -> None:
        nv = self._lib()
        state = (
            nv.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE if ready else nv.NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
        )
        self._call("set ready state", nv.nvmlSystemSetConfComputeGpusReadyState, state)
