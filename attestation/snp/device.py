"""Getting an SNP report inside the guest: configfs-tsm and ``/dev/sev-guest``.

Both sources implement :class:`ReportSource`. Hardware is reached only through
two small seams so tests can stand in for the kernel:

* :class:`ConfigfsOps` — mkdir/rmdir/read/write on the configfs-tsm tree
  (``/sys/kernel/config/tsm/report``). :class:`OsConfigfs` is the real one.
* ``ioctl(fd, request, arg) -> int`` — the ``/dev/sev-guest`` ioctls, ``arg``
  being ``struct snp_guest_request_ioctl``; the real one is :func:`fcntl.ioctl`.
  Requests and responses live in ctypes buffers whose addresses go into that
  struct, exactly as the kernel expects, so a fake reads and writes the same
  memory the kernel would.

Protocol details: Linux ``include/uapi/linux/sev-guest.h`` (SNP_GET_REPORT,
SNP_GET_EXT_REPORT), ``Documentation/ABI/testing/configfs-tsm`` and, for the
request/response messages, AMD SEV-SNP Firmware ABI Specification (pub. 56860),
chapter "Guest Messages", MSG_REPORT_REQ / MSG_REPORT_RSP.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attestation.snp.errors import SnpDeviceUnavailable, SnpFormatError
from attestation.snp.evidence import MAX_CERT_TABLE_SIZE

__all__ = [
    "SEV_GUEST_DEVICE",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "TSM_REPORT_ROOT",
    "ConfigfsOps",
    "GuestRequest",
    "IoctlFn",
    "OsConfigfs",
    "RawReport",
    "ReportSource",
    "SevGuestDevice",
    "SnpExtReportReq",
    "SnpReportReq",
    "SnpReportResp",
    "TsmReportSource",
    "default_sources",
    "pad_report_data",
]

log = logging.getLogger(__name__)

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")

#: _IOWR('S', 0, struct snp_guest_request_ioctl) and _IOWR('S', 2, ...)
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302

_MAX_OUTBLOB = 16 * 1024
_MAX_SMALL_ATTR = 64
_VMM_ERR_INVALID_LEN = 1
_VMM_ERR_BUSY = 2
_PAGE = 4096


def pad_report_data(report_data: bytes) -> bytes:
    """REPORT_DATA is 64 bytes: shorter data is zero-padded, longer is an error."""
    if len(report_data) > 64:
        raise SnpFormatError(f"report data is {len(report_data)} bytes; SNP takes at most 64")
    return bytes(report_data) + b"\0" * (64 - len(report_data))


@dataclass(frozen=True)
class RawReport:
    """What the platform returned: report bytes and, if asked for, the host's
    certificate table (None when the host supplies none)."""

    report: bytes
    cert_table: bytes | None


class ReportSource(Protocol):
    """A way to obtain SNP reports in this guest."""

    name: str

    def get_report(self, report_data: bytes, *, vmpl: int | None, want_certs: bool) -> RawReport: ...


# ---- configfs-tsm ----------------------------------------------------------------------


class ConfigfsOps(Protocol):
    """The filesystem operations configfs-tsm needs (a seam for tests)."""

    def make_entry(self, root: Path) -> Path: ...

    def remove_entry(self, entry: Path) -> None: ...

    def read(self, path: Path, limit: int) -> bytes: ...

    def write(self, path: Path, data: bytes) -> None: ...


class OsConfigfs:
    """Real configfs: ``mkdir``/``rmdir`` create and destroy a report object."""

    def make_entry(self, root: Path) -> Path:
        return Path(tempfile.mkdtemp(prefix="coco-snp-", dir=root))

    def remove_entry(self, entry: Path) -> None:
        os.rmdir(entry)

    def read(self, path: Path, limit: int) -> bytes:
        with path.open("rb", buffering=0) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SnpFormatError(f"{path.name} is larger than {limit} bytes")
        return data

    def write(self, path: Path, data: bytes) -> None:
        with path.open("wb", buffering=0) as f:
            f.write(data)


class TsmReportSource:
    """configfs-tsm report interface (Linux >= 6.7), provider ``sev_guest``.

    One temporary report object per request; ``generation`` is checked before
    each write and after reading ``outblob``/``auxblob`` so that a concurrent
    writer to the same object is detected, and the object is always removed.
    """

    name = "configfs-tsm"

    def __init__(self, root: Path = TSM_REPORT_ROOT, ops: ConfigfsOps | None = None) -> None:
        self.root = root
        self.ops: ConfigfsOps = ops if ops is not None else OsConfigfs()

    def available(self) -> bool:
        return self.root.is_dir()

    def _generation(self, entry: Path) -> int:
        text = self.ops.read(entry / "generation", _MAX_SMALL_ATTR).strip()
        if not text.isdigit():
            raise SnpDeviceUnavailable("configfs-tsm generation is not a number")
        return int(text)

    def _expect_generation(self, entry: Path, expected: int) -> None:
        got = self._generation(entry)
        if got != expected:
            raise SnpDeviceUnavailable(
                f"configfs-tsm report object changed under us (generation {got}, expected {expected})"
            )

    def get_report(self, report_data: bytes, *, vmpl: int | None, want_certs: bool) -> RawReport:
        inblob = pad_report_data(report_data)
        try:
            entry = self.ops.make_entry(self.root)
        except OSError as exc:
            raise SnpDeviceUnavailable(f"cannot create a configfs-tsm report object: {exc.strerror}") from exc
        try:
            provider = self.ops.read(entry / "provider", _MAX_SMALL_ATTR).strip()
            if provider != b"sev_guest":
                raise SnpDeviceUnavailable(
                    f"configfs-tsm provider is {provider.decode('ascii', 'replace')!r}, not sev_guest"
                )
            expected = self._generation(entry)
            if vmpl is not None:
                if not 0 <= vmpl <= 3:
                    raise SnpFormatError("VMPL must be 0..3")
                self._expect_generation(entry, expected)
                try:
                    self.ops.write(entry / "privlevel", str(vmpl).encode())
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        raise SnpDeviceUnavailable(
                            f"VMPL {vmpl} is below this guest's privlevel_floor"
                        ) from exc
                    raise
                expected += 1
            self._expect_generation(entry, expected)
            self.ops.write(entry / "inblob", inblob)
            expected += 1
            report = self.ops.read(entry / "outblob", _MAX_OUTBLOB)
            certs = None
            if want_certs:
                try:
                    certs = self.ops.read(entry / "auxblob", MAX_CERT_TABLE_SIZE) or None
                except FileNotFoundError:
                    certs = None
            self._expect_generation(entry, expected)
            return RawReport(report, certs)
        except OSError as exc:
            raise SnpDeviceUnavailable(f"configfs-tsm report failed: {exc.strerror or exc}") from exc
        finally:
            try:
                self.ops.remove_entry(entry)
            except OSError as exc:
                log.warning("could not remove configfs-tsm report object %s: %s", entry.name, exc.strerror)


# ---- /dev/sev-guest ioctls -------------------------------------------------------------


class GuestRequest(ctypes.Structure):
    """``struct snp_guest_request_ioctl`` (32 bytes)."""

    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


class SnpReportReq(ctypes.Structure):
    """``struct snp_report_req`` (96 bytes)."""

    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class SnpReportResp(ctypes.Structure):
    """``struct snp_report_resp`` (4000 bytes): status, report_size, 24 reserved, report."""

    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class SnpExtReportReq(ctypes.Structure):
    """``struct snp_ext_report_req`` (112 bytes with tail padding)."""

    _fields_ = [
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    ]


assert ctypes.sizeof(GuestRequest) == 32
assert ctypes.sizeof(SnpReportReq) == 96
assert ctypes.sizeof(SnpExtReportReq) == 112

#: ``ioctl(fd, request, arg)``: ``arg`` is the request struct; implementations
#: must write the kernel's updates (``exitinfo2``) back into it, also on failure.
IoctlFn = Callable[[int, int, "GuestRequest"], int]


def _real_ioctl(fd: int, request: int, arg: GuestRequest) -> int:
    # fcntl.ioctl passes an integer argument as a C int (too small for a pointer),
    # so hand it the 32-byte struct as a mutable buffer; CPython copies the
    # kernel's changes back before raising on failure.
    buf = bytearray(bytes(arg))
    try:
        ret: int = fcntl.ioctl(fd, request, buf, True)
        return ret
    finally:
        ctypes.memmove(ctypes.addressof(arg), bytes(buf), len(buf))


class SevGuestDevice:
    """The legacy ``/dev/sev-guest`` interface (SNP_GET_REPORT / SNP_GET_EXT_REPORT)."""

    name = "sev-guest"

    def __init__(self, path: Path = SEV_GUEST_DEVICE, ioctl: IoctlFn | None = None) -> None:
        self.path = path
        self._ioctl: IoctlFn = ioctl if ioctl is not None else _real_ioctl

    def available(self) -> bool:
        return self.path.exists()

    def _call(self, fd: int, request: int, req: ctypes.Structure, resp: SnpReportResp) -> GuestRequest:
        arg = GuestRequest(msg_version=1, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp))
        try:
            self._ioctl(fd, request, arg)
        except OSError as exc:
            fw, vmm = arg.exitinfo2 & 0xFFFFFFFF, arg.exitinfo2 >> 32
            if vmm == _VMM_ERR_INVALID_LEN and request == SNP_GET_EXT_REPORT:
                raise _CertBufferTooSmall() from exc
            raise SnpDeviceUnavailable(
                f"sev-guest ioctl failed: {exc.strerror or exc} (firmware error {fw:#x}, VMM error {vmm})"
            ) from exc
        return arg

    @staticmethod
    def _report_from(resp: SnpReportResp) -> bytes:
        raw = bytes(resp.data)
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status != 0:
            raise SnpDeviceUnavailable(f"SNP firmware returned status {status:#x} for the report request")
        if size == 0 or 32 + size > len(raw):
            raise SnpFormatError(f"sev-guest returned an implausible report size {size}")
        return raw[32 : 32 + size]

    def get_report(self, report_data: bytes, *, vmpl: int | None, want_certs: bool) -> RawReport:
        user_data = pad_report_data(report_data)
        level = 0 if vmpl is None else vmpl
        if not 0 <= level <= 3:
            raise SnpFormatError("VMPL must be 0..3")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SnpDeviceUnavailable(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            req = SnpReportReq(vmpl=level)
            ctypes.memmove(req.user_data, user_data, 64)
            resp = SnpReportResp()
            if not want_certs:
                self._call(fd, SNP_GET_REPORT, req, resp)
                return RawReport(self._report_from(resp), None)
            certs_len = 4 * _PAGE
            for _attempt in range(2):
                certs = ctypes.create_string_buffer(certs_len)
                ext = SnpExtReportReq(data=req, certs_address=ctypes.addressof(certs), certs_len=certs_len)
                try:
                    self._call(fd, SNP_GET_EXT_REPORT, ext, resp)
                except _CertBufferTooSmall:
                    needed = int(ext.certs_len)
                    if needed <= certs_len or needed > MAX_CERT_TABLE_SIZE:
                        raise SnpDeviceUnavailable(
                            f"host certificate table needs {needed} bytes; refusing"
                        ) from None
                    certs_len = (needed + _PAGE - 1) // _PAGE * _PAGE
                    continue
                table = bytes(certs.raw[: int(ext.certs_len) or certs_len])
                return RawReport(self._report_from(resp), table if any(table[:24]) else None)
            raise SnpDeviceUnavailable("host certificate table kept growing")
        finally:
            os.close(fd)


class _CertBufferTooSmall(Exception):
    pass


def default_sources(root: Path = Path("/")) -> list[ReportSource]:
    """configfs-tsm first (as newer guest-components do), then /dev/sev-guest."""
    out: list[ReportSource] = []
    tsm = TsmReportSource(root / str(TSM_REPORT_ROOT).lstrip("/"))
    if tsm.available():
        out.append(tsm)
    dev = SevGuestDevice(root / str(SEV_GUEST_DEVICE).lstrip("/"))
    if dev.available():
        out.append(dev)
    return out
