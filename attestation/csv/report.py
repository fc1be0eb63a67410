"""Hygon CSV attestation reports (4096 bytes, little-endian), as csv-rs lays
them out. Version 1 (magic all zero, or ``ATTESTATION_EXT\\0`` with flags 0):
``tee_info`` = user-pubkey digest (32), VM ID (16), VM version (16), report
data (64), mnonce (16), measurement (32), policy u32, signature usage u32,
signature algorithm u32, anonce u32, signature (r 72, s 72); the fields
before anonce are XOR-masked with the anonce (little-endian, repeating) and
the PEK signs the first 180 (masked) bytes. Version 2 (flags 1): no masking;
adds build u32, RTMR version u16, reserved (14), RTMR0..4 (32 each),
reserved (656); the PEK signs the first 1024 bytes, the signature follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation.csv.errors import CsvFormatError

__all__ = ["REPORT_SIZE", "CsvReport"]

REPORT_SIZE = 4096
_EXT_MAGIC = b"ATTESTATION_EXT\x00"


@dataclass(frozen=True)
class CsvReport:
    version: int
    signed: bytes
    r: int
    s: int
    user_pubkey_digest: bytes
    vm_id: bytes
    vm_version: bytes
    report_data: bytes
    mnonce: bytes
    measure: bytes
    policy: int
    sig_usage: int
    sig_algo: int
    anonce: int
    build: int
    rtmr_version: int
    rtmrs: tuple[bytes, ...]

    @classmethod
    def parse(cls, magic: bytes, flags: int, data: bytes) -> CsvReport:
        if len(data) != REPORT_SIZE or len(magic) != 16:
            raise CsvFormatError("CSV report must be 4096 bytes with a 16-byte magic")
        if magic == bytes(16) or (magic == _EXT_MAGIC and flags == 0):
            version = 1
        elif magic == _EXT_MAGIC and flags == 1:
            version = 2
        else:
            raise CsvFormatError(f"unsupported CSV report (magic/flags {flags})")
        if version == 1:
            anonce = struct.unpack_from("<I", data, 188)[0]
            mask = struct.pack("<I", anonce)

            def raw(b: bytes) -> bytes:
                return bytes(c ^ mask[i % 4] for i, c in enumerate(b))

            policy, usage, algo = (v ^ anonce for v in struct.unpack_from("<III", data, 176))
            r = int.from_bytes(data[192:264], "little")
            s = int.from_bytes(data[264:336], "little")
            return cls(
                1, data[:180], r, s, raw(data[0:32]), raw(data[32:48]), raw(data[48:64]), raw(data[64:128]),
                raw(data[128:144]), raw(data[144:176]), policy, usage, algo, anonce, 0, 0, (),
            )  # fmt: skip
        policy, usage, algo, build = struct.unpack_from("<IIII", data, 176)
        rtmr_version = struct.unpack_from("<H", data, 192)[0]
        rtmrs = tuple(data[208 + 32 * i : 240 + 32 * i] for i in range(5))
        r = int.from_bytes(data[1024:1096], "little")
        s = int.from_bytes(data[1096:1168], "little")
        return cls(
            2, data[:1024], r, s, data[0:32], data[32:48], data[48:64], data[64:128], data[128:144],
            data[144:176], policy, usage, algo, 0, build, rtmr_version, rtmrs,
        )  # fmt: skip
