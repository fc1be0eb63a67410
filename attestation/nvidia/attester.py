"""The NVIDIA GPU attester (an additional-device attester for the AA).

Evidence is the guest-components shape::

    {"device_evidence_list": [{"arch": "HOPPER", "uuid": "GPU-...",
                               "evidence": "<base64 report>",
                               "certificate": "<base64 PEM chain>"}]}

Each device signs the first 32 bytes of the report data (zero-padded): in the
KBS handshake that is ``H(JCS({"nonce", "tee-pubkey"}))[:32]``.

GPUs in CC mode refuse work until their "ready state" is set. When that
happens is configurable (:class:`ReadyState`): by default after the KBS has
accepted the composite evidence (``on_attestation_accepted``), as NVIDIA's
verifier does after a successful attestation; ``ON_COLLECT`` reproduces the
old guest-components attester (set right after collection); ``NEVER`` leaves
it to someone else.

NVSwitches (LS10) are read through NSCQ, which has no Python binding; this
attester collects GPUs only (switch evidence still verifies).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from enum import Enum
from typing import Any

from attestation.errors import UnsupportedPlatform
from attestation.nvidia.device import ARCH_NAMES, ConfComputeState, NvmlBackend, PynvmlBackend
from attestation.nvidia.errors import (
    CcModeDisabled,
    NvidiaError,
    NvidiaFormatError,
    NvidiaUnavailable,
    NvidiaVerificationError,
    NvmlCallError,
)
from attestation.nvidia.evidence import DeviceEvidence, device_nonce, encode_evidence
from attestation.nvidia.spdm import AttestationReport

__all__ = ["NvidiaAttester", "ReadyState", "device_nonce"]

log = logging.getLogger(__name__)


class ReadyState(Enum):
    """When the attester sets the GPUs' ready state."""

    AFTER_ACCEPT = "after-accept"
    ON_COLLECT = "on-collect"
    NEVER = "never"


def _probe(backend: NvmlBackend) -> tuple[int, ConfComputeState]:
    """Device count and CC state; raises UnsupportedPlatform / CcModeDisabled."""
    count = backend.device_count()
    if count == 0:
        raise NvidiaUnavailable("no device: NVML reports no GPUs")
    try:
        state = backend.cc_state()
    except NvmlCallError as exc:
        raise CcModeDisabled(
            f"{count} NVIDIA GPU(s) found but NVML cannot report the confidential-computing state "
            f"(driver without CC support?): {exc}"
        ) from exc
    if not state.cc_feature:
        raise CcModeDisabled(
            f"{count} NVIDIA GPU(s) found but confidential computing is off; "
            "enable CC mode on the host (nvidia-smi conf-compute / gpu-admin-tools)"
        )
    return count, state


class NvidiaAttester:
    """DeviceAttester for NVIDIA GPUs (tee ``nvidia``)."""

    tee = "nvidia"

    def __init__(
        self,
        backend: NvmlBackend,
        *,
        ready_state: ReadyState = ReadyState.AFTER_ACCEPT,
        initialised: bool = False,
    ) -> None:
        self._backend = backend
        self._ready_state = ready_state
        self._lock = threading.Lock()
        self._initialised = initialised

    @classmethod
    def detect(
        cls, backend: NvmlBackend | None = None, *, ready_state: ReadyState = ReadyState.AFTER_ACCEPT
    ) -> NvidiaAttester | None:
        """An attester when NVML shows at least one GPU with CC on; None when
        there is no NVML or no GPU. Raises :class:`CcModeDisabled` (an
        UnsupportedPlatform) when GPUs exist but CC is off: callers that treat
        UnsupportedPlatform as "no device" should log its message."""
        be = backend if backend is not None else PynvmlBackend()
        try:
            be.init()
        except UnsupportedPlatform as exc:
            log.debug("nvidia: %s", exc)
            return None
        try:
            count, state = _probe(be)
        except CcModeDisabled:
            be.shutdown()
            raise
        except UnsupportedPlatform as exc:
            log.debug("nvidia: %s", exc)
            be.shutdown()
            return None
        log.info("nvidia: %d GPU(s), CC on (environment %d)", count, state.environment)
        if state.dev_tools_mode:
            log.warning("nvidia: GPUs are in CC dev-tools mode (not for production)")
        return cls(be, ready_state=ready_state, initialised=True)

    def _ensure_init(self) -> None:
        if not self._initialised:
            self._backend.init()
            self._initialised = True

    def collect(self, report_data: bytes) -> list[DeviceEvidence]:
        """Blocking collection for every GPU with the derived 32-byte nonce."""
        nonce = device_nonce(report_data)
        with self._lock:
            self._ensure_init()
            count, _ = _probe(self._backend)
            devices: list[DeviceEvidence] = []
            for i in range(count):
                arch_code = self._backend.device_arch(i)
                arch = ARCH_NAMES.get(arch_code)
                if arch is None:
                    raise NvidiaUnavailable(f"GPU {i}: architecture {arch_code} has no CC attestation")
                report = self._backend.attestation_report(i, nonce)
                try:
                    parsed = AttestationReport.from_bytes(report)
                except NvidiaError as exc:
                    raise NvidiaFormatError(
                        f"GPU {i} returned a malformed attestation report: {exc}"
                    ) from exc
                if parsed.nonce != nonce:
                    raise NvidiaVerificationError(f"GPU {i} signed a different nonce than requested")
                devices.append(
                    DeviceEvidence(
                        arch=arch,
                        uuid=self._backend.device_uuid(i),
                        report=report,
                        cert_chain_pem=self._backend.attestation_cert_chain(i),
                    )
                )
            if self._ready_state is ReadyState.ON_COLLECT:
                self._backend.set_gpus_ready_state(True)
        return devices

    async def get_evidence(self, report_data: bytes) -> Any:
        devices = await asyncio.to_thread(self.collect, report_data)
        return encode_evidence(devices)

    def set_ready(self, ready: bool = True) -> None:
        with self._lock:
            self._ensure_init()
            self._backend.set_gpus_ready_state(ready)

    async def on_attestation_accepted(self) -> None:
        if self._ready_state is ReadyState.AFTER_ACCEPT:
            await asyncio.to_thread(self.set_ready, True)
            log.info("nvidia: GPUs set to ready (accepting client requests)")

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._backend.shutdown()
                self._initialised = False
