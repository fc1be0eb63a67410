"""The raw 1024-byte TDREPORT_STRUCT returned by TDG.MR.REPORT (via
``/dev/tdx_guest`` ``TDX_CMD_GET_REPORT0``).

Layout (Intel TDX Module ABI specification, TDG.MR.REPORT and table "TDREPORT_STRUCT";
Linux ``include/uapi/linux/tdx-guest.h``):
REPORTMACSTRUCT 256 B (type 4, reserved 12, CPUSVN 16, TEE_TCB_INFO hash 48,
TDINFO hash 48, REPORTDATA 64, reserved 32, MAC 32), TEE_TCB_INFO 239 B,
reserved 17, TDINFO 512 B. The MAC is only checkable by the CPU; the two
SHA-384 hashes inside REPORTMACSTRUCT are checked by :meth:`TdReport.from_bytes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from attestation.tdx.errors import TdxFormatError

__all__ = ["TDREPORT_LEN", "TdReport"]

TDREPORT_LEN = 1024


@dataclass(frozen=True)
class TdReport:
    report_type: bytes
    cpu_svn: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    raw: bytes

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> TdReport:
        if len(untrusted) != TDREPORT_LEN:
            raise TdxFormatError(f"TDREPORT must be {TDREPORT_LEN} bytes, got {len(untrusted)}")
        b = untrusted
        if b[0] != 0x81:
            raise TdxFormatError(f"TDREPORT type {b[0]:#x} is not TDX (0x81)")
        tee_tcb_info = b[256:495]
        td_info = b[512:1024]
        if hashlib.sha384(tee_tcb_info).digest() != b[32:80]:
            raise TdxFormatError("TDREPORT TEE_TCB_INFO hash mismatch")
        if hashlib.sha384(td_info).digest() != b[80:128]:
            raise TdxFormatError("TDREPORT TDINFO hash mismatch")
        t = tee_tcb_info
        return cls(
            report_type=b[0:4],
            cpu_svn=b[16:32],
            report_data=b[128:192],
            mac=b[224:256],
            tee_tcb_svn=t[8:24],
            mr_seam=t[24:72],
            mr_signer_seam=t[72:120],
            td_attributes=td_info[0:8],
            xfam=td_info[8:16],
            mr_td=td_info[16:64],
            mr_config_id=td_info[64:112],
            mr_owner=td_info[112:160],
            mr_owner_config=td_info[160:208],
            rtmrs=(td_info[208:256], td_info[256:304], td_info[304:352], td_info[352:400]),
            raw=b,
        )
