"""A Hygon-shaped certificate chain and CSV v2 reports built with generated
SM2 keys (no Hygon signing keys exist outside Hygon): HRK → HSK → CEK → PEK."""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.csv import sm2


def _ca_cert(d: int, usage: int, uid: bytes, signer: tuple[int, bytes]) -> bytes:
    x, y = sm2.public_key(d)
    body = struct.pack("<I", 1) + bytes(32) + struct.pack("<I", usage) + bytes(24)
    body += struct.pack("<I", 3) + x.to_bytes(72, "little") + y.to_bytes(72, "little")
    body += struct.pack("<H", len(uid)) + uid.ljust(254, b"\x00") + bytes(108)
    r, s = sm2.sign(signer[0], signer[1], body)
    return body + r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(112)


def _csv_cert(d: int, usage: int, uid: bytes, signer: tuple[int, bytes]) -> bytes:
    x, y = sm2.public_key(d)
    body = (
        struct.pack("<IBBHIII", 1, 1, 3, 0, usage, 4, 3) + x.to_bytes(72, "little") + y.to_bytes(72, "little")
    )
    body += struct.pack("<H", len(uid)) + uid.ljust(254, b"\x00") + bytes(16) + bytes(608)
    r, s = sm2.sign(signer[0], signer[1], body)
    slot = struct.pack("<II", 0x1004, 4) + r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(368)
    return body + slot + bytes(520)


def pek_json(b: bytes) -> dict[str, Any]:
    """trustee's JSON form (serde of csv-rs ``csv::Certificate``) of a PEK."""
    sigs = []
    for i in range(2):
        o = 1044 + 520 * i
        u, a = struct.unpack_from("<II", b, o)
        sigs.append(
            {"usage": u, "algo": a, "signature": {"r": list(b[o + 8 : o + 80]), "s": list(b[o + 80 : o + 152])},
             "_reserved": list(b[o + 152 : o + 520])}
        )  # fmt: skip
    ver, major, minor, res1, usage, algo, g = struct.unpack_from("<IBBHIII", b, 0)
    return {
        "body": {
            "ver": ver,
            "data": {
                "firmware": {"major": major, "minor": minor},
                "reserved1": res1,
                "pubkey": {
                    "usage": usage,
                    "algo": algo,
                    "key": {"g": g, "x": list(b[20:92]), "y": list(b[92:164])},
                },
                "uid_size": struct.unpack_from("<H", b, 164)[0],
                "user_id": list(b[166:420]),
                "sid": list(b[420:436]),
                "reserved2": list(b[436:1044]),
            },
        },
        "sigs": sigs,
    }


@dataclass
class GeneratedChain:
    dir: Path
    hrk: bytes
    pek: bytes
    pek_key: int
    chip: str = "CHIP1"

    @classmethod
    def create(cls, d: Path) -> GeneratedChain:
        k = {n: secrets.randbelow(sm2.N - 1) + 1 for n in ("hrk", "hsk", "cek", "pek")}
        hrk = _ca_cert(k["hrk"], 0, b"HYGON-SSD-HRK", (k["hrk"], b"HYGON-SSD-HRK"))
        hsk = _ca_cert(k["hsk"], 0x13, b"HYGON-SSD-HSK", (k["hrk"], b"HYGON-SSD-HRK"))
        cek = _csv_cert(k["cek"], 0x1004, b"HYGON-SSD-CEK", (k["hsk"], b"HYGON-SSD-HSK"))
        pek = _csv_cert(k["pek"], 0x1002, b"HYGON-SSD-PEK", (k["cek"], b"HYGON-SSD-CEK"))
        (d / "CHIP1").mkdir(parents=True)
        (d / "CHIP1" / "hsk_cek.cert").write_bytes(hsk + cek)
        (d / "hrk.cert").write_bytes(hrk)
        return cls(d, hrk, pek, k["pek"])

    def evidence(self, report_data: bytes, *, build: int = 1) -> dict[str, Any]:
        data = bytearray(4096)
        data[64:128] = report_data[:64].ljust(64, b"\x00")
        struct.pack_into("<IIII", data, 176, 0x1, 0x1002, 4, build)
        r, s = sm2.sign(self.pek_key, b"HYGON-SSD-PEK", bytes(data[:1024]))
        data[1024:1096], data[1096:1168] = r.to_bytes(72, "little"), s.to_bytes(72, "little")
        return {
            "attestation_report": {"magic": list(b"ATTESTATION_EXT\x00"), "flags": 1, "data": list(data)},
            "cert_chain": {"pek": pek_json(self.pek), "hsk_cek": None},
            "serial_number": list(self.chip.encode().ljust(64, b"\x00")),
            "cc_eventlog": None,
        }
