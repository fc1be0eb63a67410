"""Hygon certificates (little-endian, fixed layouts; Hygon's csv-rs is the
public reference).

* **CA certificate** (HRK, HSK; 832 bytes): body (576) = version u32, key ID
  (16), signer key ID (16), usage u32, reserved (24), public key (curve u32,
  x 72, y 72, little-endian, 32 significant bytes), user-ID length u16, user
  ID (254), reserved (108); then the signature (r 72, s 72) and 112 reserved.
* **CSV certificate** (CEK, PEK; 2084 bytes): body (1044) = version u32,
  firmware major/minor, reserved u16, key usage u32, algorithm u32, public key
  (curve u32, x 72, y 72), user-ID length u16, user ID (254), SID (16),
  reserved (608); then two signature slots of 520 bytes (usage u32,
  algorithm u32, r 72, s 72, reserved 368).

Every signature is SM2 with SM3 over the signed body and the *signer's* user ID.
The Hygon Root Key (HRK) certificate is pinned (``hrk.cert``: trustee's
``deps/verifier/src/csv/hrk.cert`` @ 78962cd4, Apache-2.0).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from attestation.csv import sm2
from attestation.csv.errors import CsvCertError, CsvFormatError

__all__ = [
    "CA_CERT_SIZE",
    "CSV_CERT_SIZE",
    "USAGE_CEK",
    "USAGE_HRK",
    "USAGE_HSK",
    "USAGE_PEK",
    "CaCertificate",
    "CsvCertificate",
    "PublicKey",
    "csv_cert_from_json",
    "pinned_hrk",
]

CA_CERT_SIZE = 832
CSV_CERT_SIZE = 2084
_ALG_SM2_SA = 4
USAGE_HRK = 0x0000
USAGE_HSK = 0x0013
USAGE_CEK = 0x1004
USAGE_PEK = 0x1002


@dataclass(frozen=True)
class PublicKey:
    x: int
    y: int
    uid: bytes

    def verify(self, message: bytes, r: int, s: int) -> bool:
        return sm2.verify(self.x, self.y, self.uid, message, r, s)


def _key(raw: bytes, uid: bytes) -> PublicKey:
    # curve id (u32), x[72], y[72]: little-endian, 32 significant bytes for SM2
    x = int.from_bytes(raw[4:76], "little")
    y = int.from_bytes(raw[76:148], "little")
    return PublicKey(x, y, uid)


def _uid(raw: bytes, size_off: int) -> bytes:
    size = struct.unpack_from("<H", raw, size_off)[0]
    if size > 254:
        raise CsvFormatError("Hygon certificate user ID is longer than 254 bytes")
    return raw[size_off + 2 : size_off + 2 + size]


def _sig(raw: bytes, off: int) -> tuple[int, int]:
    return int.from_bytes(raw[off : off + 72], "little"), int.from_bytes(raw[off + 72 : off + 144], "little")


@dataclass(frozen=True)
class CaCertificate:
    raw: bytes
    usage: int
    key: PublicKey

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> CaCertificate:
        if len(untrusted) != CA_CERT_SIZE:
            raise CsvFormatError(f"Hygon CA certificate must be {CA_CERT_SIZE} bytes")
        usage = struct.unpack_from("<I", untrusted, 36)[0]
        return cls(untrusted, usage, _key(untrusted[64:212], _uid(untrusted, 212)))

    def signed_by(self, issuer: CaCertificate) -> bool:
        return issuer.key.verify(self.raw[:576], *_sig(self.raw, 576))


@dataclass(frozen=True)
class CsvCertificate:
    raw: bytes
    usage: int
    key: PublicKey

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> CsvCertificate:
        if len(untrusted) != CSV_CERT_SIZE:
            raise CsvFormatError(f"Hygon CSV certificate must be {CSV_CERT_SIZE} bytes")
        usage = struct.unpack_from("<I", untrusted, 8)[0]
        return cls(untrusted, usage, _key(untrusted[16:164], _uid(untrusted, 164)))

    def signed_by(self, issuer: PublicKey) -> bool:
        """True when one of the two signature slots verifies with ``issuer``."""
        for i in range(2):
            off = 1044 + 520 * i
            algo = struct.unpack_from("<I", self.raw, off + 4)[0]
            if algo != _ALG_SM2_SA:
                continue
            if issuer.verify(self.raw[:1044], *_sig(self.raw, off + 8)):
                return True
        return False


def pinned_hrk() -> CaCertificate:
    hrk = CaCertificate.from_bytes(resources.files("attestation.csv").joinpath("hrk.cert").read_bytes())
    if hrk.usage != USAGE_HRK or not hrk.signed_by(hrk):
        raise CsvCertError("the packaged Hygon root key certificate does not verify")
    return hrk


def _bytes(v: Any, size: int, what: str) -> bytes:
    if not isinstance(v, list) or len(v) != size or not all(type(b) is int and 0 <= b <= 255 for b in v):
        raise CsvFormatError(f"CSV certificate field {what} must be {size} bytes")
    return bytes(v)


def _int(v: Any, what: str, limit: int) -> int:
    if type(v) is not int or not 0 <= v < limit:
        raise CsvFormatError(f"CSV certificate field {what} is not a valid integer")
    return v


def csv_cert_from_json(untrusted: Any) -> CsvCertificate:
    """A CSV certificate from trustee's JSON (serde of csv-rs ``csv::Certificate``)."""
    try:
        body, sigs = untrusted["body"], untrusted["sigs"]
        data = body["data"]
        pub, key = data["pubkey"], data["pubkey"]["key"]
        raw = struct.pack(
            "<IBBHIII",
            _int(body["ver"], "ver", 1 << 32),
            _int(data["firmware"]["major"], "firmware.major", 256),
            _int(data["firmware"]["minor"], "firmware.minor", 256),
            _int(data["reserved1"], "reserved1", 1 << 16),
            _int(pub["usage"], "usage", 1 << 32),
            _int(pub["algo"], "algo", 1 << 32),
            _int(key["g"], "g", 1 << 32),
        )
        raw += _bytes(key["x"], 72, "x") + _bytes(key["y"], 72, "y")
        raw += struct.pack("<H", _int(data["uid_size"], "uid_size", 255))
        raw += _bytes(data["user_id"], 254, "user_id") + _bytes(data["sid"], 16, "sid")
        raw += _bytes(data["reserved2"], 608, "reserved2")
        if not isinstance(sigs, list) or len(sigs) != 2:
            raise CsvFormatError("CSV certificate needs two signature slots")
        for s in sigs:
            if not isinstance(s, Mapping):
                raise CsvFormatError("CSV certificate signature slot is not an object")
            raw += struct.pack(
                "<II", _int(s["usage"], "sig usage", 1 << 32), _int(s["algo"], "sig algo", 1 << 32)
            )
            raw += _bytes(s["signature"]["r"], 72, "r") + _bytes(s["signature"]["s"], 72, "s")
            raw += _bytes(s["_reserved"], 368, "_reserved")
    except (KeyError, TypeError) as exc:
        raise CsvFormatError(f"CSV certificate JSON is missing {exc}") from exc
    return CsvCertificate.from_bytes(raw)
