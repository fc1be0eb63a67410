"""Stand-ins for the Linux SEV guest driver (no SEV-SNP hardware here).

* :class:`FakeTsmTree` — a configfs-tsm report tree on a real temporary
  directory. It inherits the real :class:`OsConfigfs` file operations and adds
  what the kernel would do: populate ``provider``/``generation`` on mkdir,
  bump ``generation`` on every write, reject a non-64-byte ``inblob`` or a
  ``privlevel`` below the floor with EINVAL, and produce ``outblob`` (a real
  recorded report) and ``auxblob`` (a certificate table) after ``inblob``.
* :class:`FakeSevGuestIoctl` — the ``/dev/sev-guest`` ioctls. It reads the
  request structs from the addresses the code passes (as the kernel does with
  copy_from_user) and writes the response and certificate buffers back,
  including the ``INVALID_LEN`` dance for a too-small certificate buffer.

Both serve *recorded* reports, so REPORT_DATA in the output is whatever the
recorded report holds, not the requested value; the requests themselves are
recorded for assertions.
"""

from __future__ import annotations

import ctypes
import errno
import shutil
from pathlib import Path

from attestation.snp.device import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    GuestRequest,
    OsConfigfs,
    SnpExtReportReq,
    SnpReportReq,
    SnpReportResp,
)


class FakeTsmTree(OsConfigfs):
    def __init__(
        self,
        report: bytes,
        certs: bytes | None = None,
        *,
        provider: bytes = b"sev_guest\n",
        floor: int = 0,
        race: bool = False,
    ) -> None:
        self.report = report
        self.certs = certs
        self.provider = provider
        self.floor = floor
        self.race = race
        self.inblobs: list[bytes] = []
        self.privlevels: list[bytes] = []
        self.live: set[Path] = set()

    def make_entry(self, root: Path) -> Path:
        entry = super().make_entry(root)
        (entry / "provider").write_bytes(self.provider)
        (entry / "generation").write_bytes(b"0\n")
        (entry / "privlevel_floor").write_bytes(f"{self.floor}\n".encode())
        self.live.add(entry)
        return entry

    def remove_entry(self, entry: Path) -> None:
        shutil.rmtree(entry)  # configfs rmdir drops the attribute files with the object
        self.live.discard(entry)

    def _bump(self, entry: Path, by: int = 1) -> None:
        gen = int((entry / "generation").read_bytes())
        (entry / "generation").write_bytes(f"{gen + by}\n".encode())

    def write(self, path: Path, data: bytes) -> None:
        entry, name = path.parent, path.name
        if name == "inblob":
            if len(data) != 64:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.inblobs.append(data)
        elif name == "privlevel":
            if int(data) < self.floor or int(data) > 3:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.privlevels.append(data)
        super().write(path, data)
        self._bump(entry)
        if name == "inblob":
            (entry / "outblob").write_bytes(self.report)
            (entry / "auxblob").write_bytes(self.certs or b"")
            if self.race:
                self._bump(entry)  # another process wrote to the same object meanwhile


class FakeSevGuestIoctl:
    def __init__(self, report: bytes, certs: bytes | None = None, *, fw_status: int = 0) -> None:
        self.report = report
        self.certs = certs
        self.fw_status = fw_status
        self.calls: list[tuple[int, bytes, int]] = []  # (request, user_data, vmpl)
        self.cert_buffer_sizes: list[int] = []

    def __call__(self, fd: int, request: int, arg: GuestRequest) -> int:
        if arg.msg_version != 1 or request not in (SNP_GET_REPORT, SNP_GET_EXT_REPORT):
            raise OSError(errno.EINVAL, "Invalid argument")
        if request == SNP_GET_EXT_REPORT:
            ext = SnpExtReportReq.from_address(arg.req_data)
            req = ext.data
        else:
            ext = None
            req = SnpReportReq.from_address(arg.req_data)
        self.calls.append((request, bytes(req.user_data), int(req.vmpl)))
        if ext is not None:
            self.cert_buffer_sizes.append(int(ext.certs_len))
            table = self.certs or b""
            if ext.certs_len % 4096:
                raise OSError(errno.EINVAL, "Invalid argument")
            if len(table) > ext.certs_len:
                ext.certs_len = (len(table) + 4095) // 4096 * 4096
                arg.exitinfo2 = 1 << 32  # SNP_GUEST_VMM_ERR_INVALID_LEN
                raise OSError(errno.EIO, "Input/output error")
            ctypes.memset(ext.certs_address, 0, ext.certs_len)
            ctypes.memmove(ext.certs_address, table, len(table))
        resp = SnpReportResp.from_address(arg.resp_data)
        body = (
            self.fw_status.to_bytes(4, "little")
            + len(self.report).to_bytes(4, "little")
            + bytes(24)
            + self.report
        )
        ctypes.memmove(ctypes.addressof(resp), body, len(body))
        return 0
