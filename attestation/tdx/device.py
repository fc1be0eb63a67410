"""TDX guest devices: the configfs-tsm report interface (quotes) and
``/dev/tdx_guest`` (raw TDREPORTs). Both sit behind small seams so tests can
serve real fixture bytes through a fake configfs tree / fake ioctl.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attestation.tdx.errors import TdxDeviceUnavailable, TdxError
from attestation.tdx.quote import MAX_QUOTE_SIZE
from attestation.tdx.tdreport import TDREPORT_LEN, TdReport

__all__ = [
    "TDX_CMD_GET_REPORT0",
    "TDX_GUEST_DEVICE",
    "TSM_REPORT_DIR",
    "TdxGuestDevice",
    "TsmReport",
]

TSM_REPORT_DIR = "/sys/kernel/config/tsm/report"
TDX_GUEST_DEVICE = "/dev/tdx_guest"
#: _IOWR('T', 1, struct { u8 reportdata[64]; u8 tdreport[1024]; })
TDX_CMD_GET_REPORT0 = 0xC4405401
_PROVIDER = "tdx_guest"


class TsmReport:
    """One-shot quote generation through configfs-tsm (provider ``tdx_guest``).

    mkdtemp under the report dir, check ``provider``, write ``inblob`` (64-byte
    report data), read ``outblob``, refuse if ``generation`` is not 1 (someone
    else wrote the same entry), rmdir."""

    def __init__(self, root: str | Path = TSM_REPORT_DIR) -> None:
        self.root = Path(root)

    def available(self) -> bool:
        if not self.root.is_dir():
            return False
        try:
            d = self._mkdtemp()
        except OSError:
            return False
        try:
            return self._read(d / "provider", 64).decode(errors="replace") == _PROVIDER + "\n"
        except OSError:
            return False
        finally:
            self._rmdir(d)

    # seams a fake configfs overrides
    def _mkdtemp(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))

    def _rmdir(self, d: Path) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(d)

    def _read(self, p: Path, limit: int) -> bytes:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise TdxError(f"configfs-tsm {p.name} larger than {limit} bytes")
        return data

    def _write(self, p: Path, data: bytes) -> None:
        with open(p, "wb", buffering=0) as f:
            f.write(data)

    def get_quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError("TDX report data must be 64 bytes")
        if not self.root.is_dir():
            raise TdxDeviceUnavailable(f"configfs-tsm report interface {self.root} is not present")
        try:
            d = self._mkdtemp()
        except OSError as exc:
            raise TdxDeviceUnavailable(f"cannot create a configfs-tsm report entry: {exc.strerror}") from exc
        try:
            provider = self._read(d / "provider", 64).decode(errors="replace")
            if provider != _PROVIDER + "\n":
                raise TdxDeviceUnavailable(f"configfs-tsm provider is {provider.strip()!r}, not {_PROVIDER}")
            self._write(d / "inblob", report_data)
            quote = self._read(d / "outblob", MAX_QUOTE_SIZE)
            generation = int(self._read(d / "generation", 32).decode().strip())
            if generation != 1:
                raise TdxError(f"configfs-tsm entry was written concurrently (generation {generation})")
            if not quote:
                raise TdxError("configfs-tsm returned an empty quote")
            return quote
        except OSError as exc:
            raise TdxError(f"configfs-tsm quote generation failed: {exc.strerror}") from exc
        finally:
            self._rmdir(d)


IoctlFn = Callable[[int, int, bytearray, bool], Any]


class TdxGuestDevice:
    """``/dev/tdx_guest``: TDREPORTs via ``TDX_CMD_GET_REPORT0``."""

    def __init__(self, path: str | None = None, *, ioctl: IoctlFn | None = None) -> None:
        self.path = path or TDX_GUEST_DEVICE
        self._ioctl: IoctlFn = ioctl if ioctl is not None else fcntl.ioctl

    def available(self) -> bool:
        return os.path.exists(self.path)

    def get_report(self, report_data: bytes) -> TdReport:
        if len(report_data) != 64:
            raise ValueError("TDX report data must be 64 bytes")
        buf = bytearray(report_data + bytes(TDREPORT_LEN))
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise TdxDeviceUnavailable(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, buf, True)
        except OSError as exc:
            raise TdxError(f"TDX_CMD_GET_REPORT0 failed: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return TdReport.from_bytes(bytes(buf[64:]))
