"""Parse NVIDIA GPU / NVSwitch attestation reports (SPDM 1.1 GET_MEASUREMENTS).

A report is the 37-byte GET_MEASUREMENTS request followed by the MEASUREMENTS
response; the response ends with a 96-byte ECDSA P-384 signature (raw r||s)
over request || response-without-signature. The signed length is computed
from the parsed structure, so trailing bytes after the signature (seen in
real reports) are tolerated and reported, never signed over.

Parsing checks structure only; :mod:`attestation.nvidia.verify` checks
authenticity.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from attestation.nvidia.errors import NvidiaFormatError

__all__ = [
    "MAX_REPORT_SIZE",
    "NONCE_SIZE",
    "REQUEST_SIZE",
    "SIGNATURE_SIZE",
    "AttestationReport",
    "MeasurementBlock",
    "MeasurementRequest",
    "MeasurementResponse",
    "OpaqueData",
    "OpaqueField",
    "OpaqueType",
]

#: NVML's buffer for the report (NVML_CC_GPU_ATTESTATION_REPORT_SIZE); anything larger is not a report.
MAX_REPORT_SIZE = 0x2000
#: How many bytes may follow the signature before the input is rejected as not-a-report.
MAX_TRAILING_BYTES = 64
REQUEST_SIZE = 37
NONCE_SIZE = 32
#: ECDSA P-384 raw r||s, used by Hopper, Blackwell and LS10.
SIGNATURE_SIZE = 96

SPDM_VERSION_11 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
DMTF_MEASUREMENT_SPEC = 0x01


class OpaqueType(IntEnum):
    """NVIDIA opaque-data field types (NVT's table)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36


_TEXT_FIELDS = {
    OpaqueType.DRIVER_VERSION,
    OpaqueType.CHIP_SKU,
    OpaqueType.CHIP_SKU_MOD,
    OpaqueType.PROJECT,
    OpaqueType.PROJECT_SKU,
    OpaqueType.PROJECT_SKU_MOD,
}

_FEATURE_FLAGS = {0: "SPT", 1: "MPT", 2: "PPCIE"}


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("ascii", errors="replace")


@dataclass(frozen=True)
class MeasurementRequest:
    """SPDM GET_MEASUREMENTS request (37 bytes)."""

    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> MeasurementRequest:
        if len(untrusted) < REQUEST_SIZE:
            raise NvidiaFormatError(
                f"report truncated: {len(untrusted)} bytes, the request alone is {REQUEST_SIZE}"
            )
        version, code, p1, p2 = untrusted[0], untrusted[1], untrusted[2], untrusted[3]
        if version != SPDM_VERSION_11:
            raise NvidiaFormatError(f"not an SPDM 1.1 request (version byte {version:#04x})")
        if code != GET_MEASUREMENTS:
            raise NvidiaFormatError(f"not a GET_MEASUREMENTS request (code {code:#04x})")
        if not p1 & 0x01:
            raise NvidiaFormatError("GET_MEASUREMENTS request did not ask for a signature")
        return cls(version, p1, p2, bytes(untrusted[4:36]), untrusted[36])


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block (1-based index)."""

    index: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    type: int
    value: bytes


@dataclass(frozen=True)
class OpaqueData:
    """NVIDIA's TLV list in the response's opaque data (u16 type, u16 size, value)."""

    fields: tuple[OpaqueField, ...]

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> OpaqueData:
        out: list[OpaqueField] = []
        pos = 0
        while pos < len(untrusted):
            if pos + 4 > len(untrusted):
                raise NvidiaFormatError("opaque data: truncated field header")
            ftype, fsize = struct.unpack_from("<HH", untrusted, pos)
            pos += 4
            if pos + fsize > len(untrusted):
                raise NvidiaFormatError(f"opaque data: field {ftype} runs past the end")
            out.append(OpaqueField(ftype, bytes(untrusted[pos : pos + fsize])))
            pos += fsize
        return cls(tuple(out))

    def get(self, ftype: int) -> bytes | None:
        for f in self.fields:
            if f.type == ftype:
                return f.value
        return None

    @property
    def driver_version(self) -> str | None:
        v = self.get(OpaqueType.DRIVER_VERSION)
        return None if v is None else _text(v)

    @property
    def vbios_version(self) -> str | None:
        """GPU: "96.00.9f.00.01" from 8 binary bytes; NVSwitch: the ASCII text."""
        v = self.get(OpaqueType.VBIOS_VERSION)
        if v is None:
            return None
        if len(v) == 8 and not all(0x20 <= b < 0x7F or b == 0 for b in v):
            head = v[:4][::-1]
            return ".".join(f"{b:02x}" for b in head) + f".{v[4]:02x}"
        return _text(v)

    @property
    def fwid(self) -> bytes | None:
        return self.get(OpaqueType.FWID)

    @property
    def nvdec0_disabled(self) -> bool:
        v = self.get(OpaqueType.NVDEC0_STATUS)
        return v is not None and len(v) >= 1 and v[0] == 0x55

    @property
    def feature_flag(self) -> str | None:
        v = self.get(OpaqueType.FEATURE_FLAG)
        if not v:
            return None
        n = int.from_bytes(v, "little")
        return _FEATURE_FLAGS.get(n, str(n))

    @property
    def measurement_counts(self) -> tuple[int, ...] | None:
        v = self.get(OpaqueType.MSRSCNT)
        if v is None:
            return None
        if len(v) % 4:
            raise NvidiaFormatError("opaque data: MSRSCNT is not a list of u32")
        return struct.unpack(f"<{len(v) // 4}I", v)

    def text(self, ftype: OpaqueType) -> str | None:
        v = self.get(ftype)
        return None if v is None else _text(v)

    def as_claims(self) -> dict[str, object]:
        """Every known field, text fields as text and the rest as hex."""
        claims: dict[str, object] = {}
        for f in self.fields:
            try:
                name = OpaqueType(f.type).name.lower()
            except ValueError:
                name = f"type_{f.type}"
            if f.type in _TEXT_FIELDS:
                claims[name] = _text(f.value)
            else:
                claims[name] = f.value.hex()
        if (vb := self.vbios_version) is not None:
            claims["vbios_version"] = vb
        if (ff := self.feature_flag) is not None:
            claims["feature_flag"] = ff
        if (counts := self.measurement_counts) is not None:
            claims["msrscnt"] = list(counts)
        if self.get(OpaqueType.NVDEC0_STATUS) is not None:
            claims["nvdec0_status"] = "disabled" if self.nvdec0_disabled else "enabled"
        return claims


@dataclass(frozen=True)
class MeasurementResponse:
    """SPDM MEASUREMENTS response."""

    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes
    #: Bytes of the response covered by the signature (everything before it).
    signed_length: int


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    pos = 0
    for _ in range(count):
        if pos + 4 > len(record):
            raise NvidiaFormatError("measurement record: truncated block header")
        index, spec, size = record[pos], record[pos + 1], int.from_bytes(record[pos + 2 : pos + 4], "little")
        pos += 4
        if spec != DMTF_MEASUREMENT_SPEC:
            raise NvidiaFormatError(f"measurement block {index}: not a DMTF measurement (spec {spec})")
        if pos + size > len(record) or size < 3:
            raise NvidiaFormatError(f"measurement block {index}: bad size {size}")
        value_type = record[pos]
        value_size = int.from_bytes(record[pos + 1 : pos + 3], "little")
        if value_size != size - 3:
            raise NvidiaFormatError(f"measurement block {index}: value size {value_size} != {size - 3}")
        if index in seen:
            raise NvidiaFormatError(f"measurement block {index} appears twice")
        seen.add(index)
        blocks.append(MeasurementBlock(index, value_type, bytes(record[pos + 3 : pos + size])))
        pos += size
    if pos != len(record):
        raise NvidiaFormatError("measurement record: length does not match its blocks")
    return tuple(blocks)


def _parse_response(untrusted: bytes) -> tuple[MeasurementResponse, int]:
    """Parse a response; return it and the total bytes consumed (with signature)."""
    if len(untrusted) < 8:
        raise NvidiaFormatError("report truncated: no MEASUREMENTS response header")
    version, code, p1, p2, nblocks = untrusted[0], untrusted[1], untrusted[2], untrusted[3], untrusted[4]
    if version != SPDM_VERSION_11:
        raise NvidiaFormatError(f"not an SPDM 1.1 response (version byte {version:#04x})")
    if code != MEASUREMENTS:
        raise NvidiaFormatError(f"not a MEASUREMENTS response (code {code:#04x})")
    record_len = int.from_bytes(untrusted[5:8], "little")
    pos = 8
    if pos + record_len + NONCE_SIZE + 2 > len(untrusted):
        raise NvidiaFormatError("report truncated inside the measurement record")
    blocks = _parse_blocks(bytes(untrusted[pos : pos + record_len]), nblocks)
    pos += record_len
    responder_nonce = bytes(untrusted[pos : pos + NONCE_SIZE])
    pos += NONCE_SIZE
    opaque_len = int.from_bytes(untrusted[pos : pos + 2], "little")
    pos += 2
    if pos + opaque_len + SIGNATURE_SIZE > len(untrusted):
        raise NvidiaFormatError("report truncated: opaque data or signature missing")
    opaque = OpaqueData.from_bytes(bytes(untrusted[pos : pos + opaque_len]))
    pos += opaque_len
    signature = bytes(untrusted[pos : pos + SIGNATURE_SIZE])
    resp = MeasurementResponse(version, p1, p2, blocks, responder_nonce, opaque, signature, pos)
    return resp, pos + SIGNATURE_SIZE


@dataclass(frozen=True)
class AttestationReport:
    """A parsed (not yet verified) GPU or NVSwitch attestation report."""

    request: MeasurementRequest
    response: MeasurementResponse
    #: request || response-without-signature: the bytes the signature covers.
    signed_bytes: bytes
    #: Bytes after the signature that were ignored.
    trailing_bytes: int

    @classmethod
    def from_bytes(cls, untrusted_report: bytes) -> AttestationReport:
        if len(untrusted_report) > MAX_REPORT_SIZE:
            raise NvidiaFormatError(f"report is {len(untrusted_report)} bytes, more than {MAX_REPORT_SIZE}")
        request = MeasurementRequest.from_bytes(untrusted_report)
        response, used = _parse_response(untrusted_report[REQUEST_SIZE:])
        trailing = len(untrusted_report) - REQUEST_SIZE - used
        if trailing > MAX_TRAILING_BYTES:
            raise NvidiaFormatError(f"{trailing} unexpected bytes after the report signature")
        signed = bytes(untrusted_report[: REQUEST_SIZE + response.signed_length])
        return cls(request, response, signed, trailing)

    @property
    def nonce(self) -> bytes:
        """The requester's nonce (what the attester asked the device to sign)."""
        return self.request.nonce

    @property
    def opaque(self) -> OpaqueData:
        return self.response.opaque

    def measurements(self) -> dict[int, bytes]:
        """Block index (1-based) -> measurement value."""
        return {b.index: b.value for b in self.response.blocks}
