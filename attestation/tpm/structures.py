"""TPM 2.0 wire structures a verifier needs, parsed from untrusted bytes.

Layouts follow the TCG "TPM 2.0 Library, Part 2: Structures" (big-endian):
``TPMS_ATTEST`` (what a quote signs), ``TPMT_SIGNATURE``, ``TPMT_PUBLIC``
(an attestation key's public area) and ``TPML_PCR_SELECTION``. Parsing only
checks structure (lengths, known tags, nothing left over); authenticity is
:mod:`attestation.tpm.quote`'s job.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.tpm.errors import TpmFormatError

__all__ = [
    "ALG_ECC",
    "ALG_ECDSA",
    "ALG_NULL",
    "ALG_RSA",
    "ALG_RSAPSS",
    "ALG_RSASSA",
    "ALG_SHA1",
    "ALG_SHA256",
    "ALG_SHA384",
    "ALG_SHA512",
    "ST_ATTEST_QUOTE",
    "TPM_GENERATED_VALUE",
    "Attest",
    "ClockInfo",
    "PcrSelection",
    "Public",
    "Signature",
    "encode_pcr_selection",
    "hash_size",
    "parse_attest",
    "parse_public",
    "parse_signature",
]

TPM_GENERATED_VALUE = 0xFF544347
ST_ATTEST_QUOTE = 0x8018

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_NULL = 0x0010
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_RSASSA = 0x0014
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_ECC = 0x0023

_HASH_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
_CURVES: dict[int, type[ec.EllipticCurve]] = {
    0x0003: ec.SECP256R1,
    0x0004: ec.SECP384R1,
    0x0005: ec.SECP521R1,
}
#: a quote message is ~150 bytes; public areas and signatures < 1 KiB
MAX_STRUCTURE = 4096


class _R:
    def __init__(self, data: bytes, what: str) -> None:
        if len(data) > MAX_STRUCTURE:
            raise TpmFormatError(f"{what} is larger than {MAX_STRUCTURE} bytes")
        self.d = data
        self.i = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.i + n > len(self.d):
            raise TpmFormatError(f"{self.what} truncated reading {field}")
        out = self.d[self.i : self.i + n]
        self.i += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        v: int = struct.unpack(">H", self.take(2, field))[0]
        return v

    def u32(self, field: str) -> int:
        v: int = struct.unpack(">I", self.take(4, field))[0]
        return v

    def u64(self, field: str) -> int:
        v: int = struct.unpack(">Q", self.take(8, field))[0]
        return v

    def tpm2b(self, field: str) -> bytes:
        return self.take(self.u16(f"{field} size"), field)

    def end(self) -> None:
        if self.i != len(self.d):
            raise TpmFormatError(f"{self.what} has {len(self.d) - self.i} trailing bytes")


@dataclass(frozen=True)
class PcrSelection:
    hash_alg: int
    #: selected PCR indices, ascending
    indices: tuple[int, ...]


def _pcr_selections(r: _R) -> tuple[PcrSelection, ...]:
    count = r.u32("PCR selection count")
    if count > 16:
        raise TpmFormatError(f"{count} PCR banks selected")
    out = []
    for _ in range(count):
        alg = r.u16("PCR bank hash")
        size = r.u8("PCR select size")
        if size > 8:
            raise TpmFormatError("PCR select bitmap longer than 8 bytes")
        bitmap = r.take(size, "PCR select bitmap")
        idx = tuple(i for i in range(size * 8) if bitmap[i // 8] & (1 << (i % 8)))
        out.append(PcrSelection(alg, idx))
    return tuple(out)


def encode_pcr_selection(selections: tuple[PcrSelection, ...]) -> bytes:
    """``TPML_PCR_SELECTION`` bytes (3-byte bitmaps, as TPMs expect for PCRs 0..23)."""
    out = struct.pack(">I", len(selections))
    for s in selections:
        bitmap = bytearray(3)
        for i in s.indices:
            if not 0 <= i < 24:
                raise ValueError(f"PCR index {i} out of range")
            bitmap[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", s.hash_alg, 3) + bytes(bitmap)
    return out


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class Attest:
    """A ``TPMS_ATTEST`` of type quote (the bytes the AK signs)."""

    raw: bytes
    qualified_signer: bytes
    #: the caller's nonce (``qualifyingData``)
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(untrusted: bytes) -> Attest:
    r = _R(untrusted, "TPM quote message (TPMS_ATTEST)")
    if r.u32("magic") != TPM_GENERATED_VALUE:
        raise TpmFormatError("TPM quote message does not start with TPM_GENERATED_VALUE")
    if r.u16("type") != ST_ATTEST_QUOTE:
        raise TpmFormatError("TPM attestation structure is not a quote (TPM_ST_ATTEST_QUOTE)")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    if len(extra) > 64:
        raise TpmFormatError("TPM quote extraData is longer than 64 bytes")
    clock = ClockInfo(r.u64("clock"), r.u32("resetCount"), r.u32("restartCount"), r.u8("safe") != 0)
    fw = r.u64("firmwareVersion")
    sel = _pcr_selections(r)
    digest = r.tpm2b("pcrDigest")
    r.end()
    return Attest(untrusted, signer, extra, clock, fw, sel, digest)


@dataclass(frozen=True)
class Signature:
    """A ``TPMT_SIGNATURE`` (RSASSA/RSAPSS: ``value``; ECDSA: ``r``/``s``)."""

    sig_alg: int
    hash_alg: int
    value: bytes = b""
    r: bytes = b""
    s: bytes = b""


def parse_signature(untrusted: bytes) -> Signature:
    r = _R(untrusted, "TPM signature (TPMT_SIGNATURE)")
    alg = r.u16("sigAlg")
    if alg in (ALG_RSASSA, ALG_RSAPSS):
        h = r.u16("hash")
        sig = Signature(alg, h, value=r.tpm2b("signature"))
    elif alg == ALG_ECDSA:
        h = r.u16("hash")
        sig = Signature(alg, h, r=r.tpm2b("signatureR"), s=r.tpm2b("signatureS"))
    else:
        raise TpmFormatError(f"unsupported TPM signature algorithm {alg:#x}")
    r.end()
    return sig


@dataclass(frozen=True)
class Public:
    """A ``TPMT_PUBLIC`` of an RSA or ECC key."""

    raw: bytes
    key_type: int
    name_alg: int
    object_attributes: int
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @property
    def name(self) -> bytes:
        """The TPM object name: ``nameAlg || H_nameAlg(TPMT_PUBLIC)``."""
        algs = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
        if self.name_alg not in algs:
            raise TpmFormatError(f"unsupported nameAlg {self.name_alg:#x}")
        return struct.pack(">H", self.name_alg) + hashlib.new(algs[self.name_alg], self.raw).digest()


def _sym(r: _R) -> None:
    if r.u16("symmetric algorithm") != ALG_NULL:
        r.u16("symmetric key bits")
        r.u16("symmetric mode")


def parse_public(untrusted: bytes) -> Public:
    r = _R(untrusted, "TPM public area (TPMT_PUBLIC)")
    kt = r.u16("type")
    name_alg = r.u16("nameAlg")
    attrs = r.u32("objectAttributes")
    r.tpm2b("authPolicy")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    try:
        if kt == ALG_RSA:
            _sym(r)
            if r.u16("scheme") != ALG_NULL:
                r.u16("scheme hash")
            bits = r.u16("keyBits")
            exponent = r.u32("exponent") or 65537
            modulus = r.tpm2b("modulus")
            if bits not in (1024, 2048, 3072, 4096) or len(modulus) * 8 != bits:
                raise TpmFormatError("RSA modulus size does not match keyBits")
            key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        elif kt == ALG_ECC:
            _sym(r)
            if r.u16("scheme") != ALG_NULL:
                r.u16("scheme hash")
            curve = _CURVES.get(r.u16("curveID"))
            if r.u16("kdf") != ALG_NULL:
                r.u16("kdf hash")
            x, y = r.tpm2b("x"), r.tpm2b("y")
            if curve is None:
                raise TpmFormatError("unsupported ECC curve")
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            ).public_key()
        else:
            raise TpmFormatError(f"unsupported TPM key type {kt:#x}")
    except ValueError as exc:
        raise TpmFormatError(f"TPM public key is not a valid key: {exc}") from exc
    r.end()
    return Public(untrusted, kt, name_alg, attrs, key)


def hash_size(alg: int) -> int | None:
    return _HASH_SIZES.get(alg)
