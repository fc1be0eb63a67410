"""TDX RTMRs as :class:`attestation.eventlog.registers.MeasurementRegister`.

Through the kernel's sysfs interface (Linux >= 6.16,
``/sys/devices/virtual/misc/tdx_guest/measurements/rtmr<N>:sha384``; reading
gives 48 raw bytes, writing 48 bytes extends). Without it, reads fall back to
a TDREPORT from ``/dev/tdx_guest`` and extending is unsupported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from attestation.eventlog.registers import tdx_pcr_to_ccmr
from attestation.tdx.device import TdxGuestDevice
from attestation.tdx.errors import TdxDeviceUnavailable, TdxError

__all__ = ["TDX_MEASUREMENTS_DIR", "TdxRtmrRegisters"]

TDX_MEASUREMENTS_DIR = "/sys/devices/virtual/misc/tdx_guest/measurements"
TDX_REGISTER_LEN = 48


class _Report(Protocol):
    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]: ...


class _ReportSource(Protocol):
    def get_report(self, report_data: bytes) -> _Report: ...


class TdxRtmrRegisters:
    hash_algorithm = "sha384"

    def __init__(
        self, measurements_dir: str | Path = TDX_MEASUREMENTS_DIR, *, device: _ReportSource | None = None
    ) -> None:
        self._dir = Path(measurements_dir)
        self._device = device

    @property
    def has_sysfs(self) -> bool:
        return self._dir.is_dir()

    def pcr_to_ccmr(self, pcr: int) -> int:
        return tdx_pcr_to_ccmr(pcr)

    def _path(self, pcr: int) -> Path:
        return self._dir / f"rtmr{self.pcr_to_ccmr(pcr) - 1}:sha384"

    def read(self, pcr: int) -> bytes:
        if self.has_sysfs:
            with open(self._path(pcr), "rb") as f:
                value = f.read(TDX_REGISTER_LEN + 1)
            if len(value) != TDX_REGISTER_LEN:
                raise TdxError(f"RTMR sysfs file returned {len(value)} bytes, expected 48")
            return value
        device: _ReportSource = self._device if self._device is not None else TdxGuestDevice()
        report = device.get_report(bytes(64))
        return report.rtmrs[self.pcr_to_ccmr(pcr) - 1]

    def extend(self, pcr: int, digest: bytes) -> None:
        if len(digest) > TDX_REGISTER_LEN:
            raise ValueError("RTMR extend data is at most 48 bytes")
        if not self.has_sysfs:
            raise TdxDeviceUnavailable(
                f"extending RTMRs needs the kernel's TDX measurements sysfs ({self._dir}, Linux >= 6.16)"
            )
        with open(self._path(pcr), "wb", buffering=0) as f:
            f.write(digest.ljust(TDX_REGISTER_LEN, b"\x00"))
