"""The TDX attester (guest side), following guest-components' ``tdx`` attester.

* Detection: configfs-tsm with provider ``tdx_guest``, or ``/dev/tdx_guest``.
* Evidence: ``{"cc_eventlog": <b64 CCEL+AAEL> | null, "quote": <b64>}``; the quote
  always comes from configfs-tsm (64-byte report data, zero-padded).
* Init-data binding: MRCONFIGID from the measurements sysfs (Linux >= 6.16) or
  from a TDREPORT via ``/dev/tdx_guest``, compared with the digest resized to 48.
* Runtime measurements: :meth:`registers` gives the RTMR bank for
  :class:`attestation.eventlog.EventLog`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from attestation._binding import resize
from attestation.eventlog.aael import CCEL_DATA_PATH, EVENTLOG_PATH, build_cc_eventlog
from attestation.tdx.device import TdxGuestDevice, TsmReport
from attestation.tdx.errors import TdxDeviceUnavailable, TdxError, TdxVerificationError
from attestation.tdx.evidence import TdxEvidence
from attestation.tdx.registers import TDX_MEASUREMENTS_DIR, TdxRtmrRegisters

__all__ = ["TdxAttester", "detect"]

_MRCONFIGID_LEN = 48


def detect(*, tsm: TsmReport | None = None, device: TdxGuestDevice | None = None) -> bool:
    """True when this guest is a TD (configfs-tsm ``tdx_guest`` or ``/dev/tdx_guest``)."""
    return (tsm or TsmReport()).available() or (device or TdxGuestDevice()).available()


class TdxAttester:
    tee = "tdx"

    def __init__(
        self,
        *,
        tsm: TsmReport | None = None,
        device: TdxGuestDevice | None = None,
        measurements_dir: str | Path = TDX_MEASUREMENTS_DIR,
        ccel_path: str | Path = CCEL_DATA_PATH,
        aael_path: str | Path | None = None,
    ) -> None:
        self._tsm = tsm or TsmReport()
        self._device = device or TdxGuestDevice()
        self._measurements = Path(measurements_dir)
        self._ccel = Path(ccel_path)
        self._aael = Path(aael_path) if aael_path is not None else None

    def registers(self) -> TdxRtmrRegisters:
        return TdxRtmrRegisters(self._measurements, device=self._device)

    def _evidence(self, report_data: bytes) -> dict[str, Any]:
        if len(report_data) > 64:
            raise TdxError("TDX report data must be at most 64 bytes")
        quote = self._tsm.get_quote(report_data.ljust(64, b"\x00"))
        aael = self._aael if self._aael is not None else _default_aael()
        return TdxEvidence(quote, build_cc_eventlog(ccel_path=self._ccel, aael_path=aael)).to_json()

    async def get_evidence(self, report_data: bytes) -> Any:
        return await asyncio.to_thread(self._evidence, bytes(report_data))

    def _mr_config_id(self) -> bytes:
        sysfs = self._measurements / "mrconfigid"
        if sysfs.exists():
            with open(sysfs, "rb") as f:
                value = f.read(_MRCONFIGID_LEN + 1)
            if len(value) != _MRCONFIGID_LEN:
                raise TdxError("mrconfigid sysfs file did not return 48 bytes")
            return value
        if not self._device.available():
            raise TdxDeviceUnavailable("neither the TDX measurements sysfs nor /dev/tdx_guest is present")
        return self._device.get_report(bytes(64)).body.mr_config_id

    async def bind_init_data(self, digest: bytes) -> None:
        mr_config_id = await asyncio.to_thread(self._mr_config_id)
        want = resize(digest, _MRCONFIGID_LEN)
        if mr_config_id != want:
            raise TdxVerificationError("MRCONFIGID does not match the init-data digest")

    def evidence_json(self, report_data: bytes) -> str:
        """Synchronous helper: the evidence as a JSON string."""
        return json.dumps(self._evidence(report_data))


def _default_aael() -> Path:
    return Path(os.environ.get("AAEL_PATH", EVENTLOG_PATH))
