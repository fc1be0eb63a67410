"""The raw 1024-byte TDREPORT_STRUCT returned by TDG.MR.REPORT (via
``/dev/tdx_guest`` ``TDX_CMD_GET_REPORT0``).

Layout (Intel TDX Module ABI specification, TDG.MR.REPORT and table "TDREPORT_STRUCT";
Linux ``include/uapi/linux/tdx-guest.h``):
REPORTMACSTRUCT 256 B (type 4, reserved 12, CPUSVN 16, TEE_TCB_INFO hash 48,
TDINFO hash 48, REPORTDATA 64, reserved 32, MAC 32), TEE_TCB_INFO 239 B,
reserved 17, TDINFO 512 B. The MAC is only checkable by the CPU; the two
SHA-384 hashes inside REPORTMACSTRUCT are checked by :meth:`TdReport.from_bytes`.

The measurement fields are the ones a quote carries: a quote's TD report body is
TEE_TCB_INFO[8:128] + TDINFO[0:400] + REPORTDATA, so the TDREPORT's are parsed
into the same :class:`~attestation.tdx.quote.TdReportBody`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from attestation.tdx.errors import TdxFormatError
from attestation.tdx.quote import TdReportBody

__all__ = ["TDREPORT_LEN", "TdReport"]

TDREPORT_LEN = 1024


@dataclass(frozen=True)
class TdReport:
    report_type: bytes
    cpu_svn: bytes
    mac: bytes
    #: MRTD, RTMRs, MRCONFIGID, REPORTDATA ... as a quote's TD report body has them
    body: TdReportBody
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
        body = TdReportBody.from_bytes(tee_tcb_info[8:128] + td_info[0:400] + b[128:192])
        return cls(report_type=b[0:4], cpu_svn=b[16:32], mac=b[224:256], body=body, raw=b)
