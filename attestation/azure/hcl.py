"""The Azure confidential-VM HCL report (what the paravisor writes to vTPM NV
index 0x01400001).

Layout (little-endian; Microsoft's az-cvm-vtpm ``hcl`` module is the public
reference): a 32-byte header (``"HCLA"`` signature, version, used report
size, request type, status, 3 reserved words), a 1184-byte hardware-report
area (an SNP attestation report, or a 1024-byte TDX TDREPORT followed by
padding), then the IGVM request data: data size, version, report type (2 =
SNP, 4 = TDX), report-data hash type (1 = SHA-256) and the size of the
*runtime data* ("variable data") that follows: a JSON document with the vTPM
attestation key (``{"keys": [{"kid": "HCLAkPub", "kty": "RSA", ...}]}``) and,
since evidence version 2, the caller's ``user-data`` (hex).

The hardware report binds the runtime data: ``SHA-256(var_data)`` is the first
32 bytes of its REPORT_DATA. Everything else in the HCL report is unsigned.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from attestation.azure.errors import HclFormatError
from coco_common.b64 import b64url_decode
from coco_common.strict_json import strict_loads

__all__ = [
    "HCL_HEADER_SIGNATURE",
    "HCL_REPORT_NV_INDEX",
    "MAX_HCL_REPORT",
    "REPORT_DATA_NV_INDEX",
    "HclReport",
    "HwReportType",
]

#: NV index holding the HCL report, and the one a guest writes its user data to
HCL_REPORT_NV_INDEX = 0x01400001
REPORT_DATA_NV_INDEX = 0x01400002
#: "HCLA" read as a little-endian u32
HCL_HEADER_SIGNATURE = 0x414C4348
MAX_HCL_REPORT = 16 * 1024

_HEADER = 32
_HW_AREA = 1184
_IGVM = _HEADER + _HW_AREA
_VAR = _IGVM + 20
_SNP_LEN = 1184
_TD_REPORT_LEN = 1024
_SHA256 = 1
_AK_KID = "HCLAkPub"


class HwReportType(enum.IntEnum):
    SNP = 2
    TDX = 4


def _b64url_int(v: Any, what: str) -> int:
    if not isinstance(v, str) or len(v) > 1400:
        raise HclFormatError(f"HCL AK {what} must be a base64url string")
    try:
        raw = b64url_decode(v)
    except ValueError as exc:
        raise HclFormatError(f"HCL AK {what} is not base64url") from exc
    return int.from_bytes(raw, "big")


@dataclass(frozen=True)
class HclReport:
    raw: bytes
    report_type: HwReportType
    #: the SNP report (1184 bytes) or the TDREPORT (1024 bytes)
    hw_report: bytes
    #: the runtime data the hardware report binds (JSON bytes)
    var_data: bytes
    runtime_data: Mapping[str, Any]

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> HclReport:
        if len(untrusted) > MAX_HCL_REPORT:
            raise HclFormatError(f"HCL report larger than {MAX_HCL_REPORT} bytes")
        if len(untrusted) < _VAR:
            raise HclFormatError(f"HCL report is {len(untrusted)} bytes, at least {_VAR} needed")
        sig = struct.unpack_from("<I", untrusted, 0)[0]
        if sig != HCL_HEADER_SIGNATURE:
            raise HclFormatError("HCL report does not start with the HCLA signature")
        _data_size, _version, rtype, hash_type, var_size = struct.unpack_from("<5I", untrusted, _IGVM)
        try:
            report_type = HwReportType(rtype)
        except ValueError:
            raise HclFormatError(f"HCL report type {rtype} is neither SNP (2) nor TDX (4)") from None
        if hash_type != _SHA256:
            raise HclFormatError(f"HCL report-data hash type {hash_type} is not SHA-256 (1)")
        if _VAR + var_size > len(untrusted):
            raise HclFormatError("HCL runtime data runs past the end of the report")
        var_data = untrusted[_VAR : _VAR + var_size]
        try:
            doc = strict_loads(var_data)
        except ValueError as exc:
            raise HclFormatError(f"HCL runtime data is not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise HclFormatError("HCL runtime data is not a JSON object")
        hw_len = _SNP_LEN if report_type is HwReportType.SNP else _TD_REPORT_LEN
        return cls(
            raw=untrusted,
            report_type=report_type,
            hw_report=untrusted[_HEADER : _HEADER + hw_len],
            var_data=var_data,
            runtime_data=doc,
        )

    @property
    def var_data_sha256(self) -> bytes:
        return hashlib.sha256(self.var_data).digest()

    def ak_public(self) -> rsa.RSAPublicKey:
        """The vTPM attestation key (``kid`` ``HCLAkPub``) from the runtime data."""
        keys = self.runtime_data.get("keys")
        if not isinstance(keys, list):
            raise HclFormatError("HCL runtime data has no 'keys' list")
        found = [k for k in keys if isinstance(k, dict) and k.get("kid") == _AK_KID]
        if len(found) != 1:
            raise HclFormatError(f"HCL runtime data must hold exactly one {_AK_KID} key")
        k = found[0]
        if k.get("kty") != "RSA":
            raise HclFormatError("HCL attestation key is not an RSA key")
        n, e = _b64url_int(k.get("n"), "modulus"), _b64url_int(k.get("e"), "exponent")
        if n.bit_length() not in range(2041, 4097) or e < 3:
            raise HclFormatError("HCL attestation key has an implausible size")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise HclFormatError(f"HCL attestation key is invalid: {exc}") from exc

    def user_data(self) -> bytes | None:
        """``user-data`` (hex) from the runtime data, when present (evidence v2)."""
        v = self.runtime_data.get("user-data")
        if v is None:
            return None
        if not isinstance(v, str) or len(v) > 1024:
            raise HclFormatError("HCL user-data must be a hex string")
        try:
            return bytes.fromhex(v)
        except ValueError as exc:
            raise HclFormatError("HCL user-data is not hex") from exc
