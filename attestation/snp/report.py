"""SEV-SNP attestation report: parse 1184 bytes into a frozen, checked type.

Layout: AMD SEV Secure Nested Paging Firmware ABI Specification (pub. 56860),
chapter "Guest Messages", table "ATTESTATION_REPORT Structure" (with table "TCB_VERSION
Structure" for the TCB fields); cross-checked against virtee/sev
``src/firmware/guest/types/snp.rs`` @ 9cf2adbffa209cc5becf7ff89ffdf624e7278ced and
google/go-sev-guest ``abi/abi.go``. Versions 2, 3, 4 (read like 3, as virtee/sev does) and 5 are read;
anything else is rejected with :class:`UnknownReportVersion` rather than
misread. Reserved ranges must be zero (they are either signed, so a non-zero
byte is a forgery or a newer format, or outside the signature, where a
non-zero byte would be malleable).

Parsing says nothing about authenticity: see :mod:`attestation.snp.verify`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from attestation.snp.errors import ReportSizeError, SnpFormatError, UnknownReportVersion

__all__ = [
    "REPORT_SIZE",
    "SIGNED_REGION_END",
    "SUPPORTED_VERSIONS",
    "AttestationReport",
    "FirmwareVersion",
    "GuestPolicy",
    "KeyInfo",
    "PlatformInfo",
    "Product",
    "ReportSignature",
    "SigningKey",
    "TcbVersion",
    "product_from_cpuid",
]

#: Size of an attestation report in bytes.
REPORT_SIZE = 0x4A0
#: The ECDSA signature covers bytes ``[0, SIGNED_REGION_END)``.
SIGNED_REGION_END = 0x2A0
#: Report versions this module reads.
SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5})

_SIG_COMPONENT = 72  # r and s are each 72 bytes little-endian, 48 significant
_SIG_SIGNIFICANT = 48


class Product(enum.Enum):
    """AMD EPYC generation; the value is the name AMD KDS uses in URLs."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def turin_like(self) -> bool:
        """Turin and later encode TCB_VERSION with an FMC byte and an 8-byte hwID."""
        return self is Product.TURIN

    @classmethod
    def from_name(cls, untrusted_name: str) -> Product:
        """``"Milan"``, ``"milan"`` or a VCEK productName such as ``"Milan-B0"``."""
        base = untrusted_name.split("-", 1)[0].strip().lower()
        for p in cls:
            if p.value.lower() == base:
                return p
        raise SnpFormatError(f"unknown SEV-SNP product name {untrusted_name[:32]!r}")


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Generation from the report's CPUID_FAM_ID/CPUID_MOD_ID (v3+), or None if unknown."""
    if family == 0x19:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
        return None
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


class SigningKey(enum.Enum):
    """KEY_INFO.SIGNING_KEY: which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION (8 bytes). ``fmc`` is set only for the Turin layout."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    raw: bytes

    @classmethod
    def from_bytes(cls, raw: bytes, *, turin_layout: bool) -> TcbVersion:
        if len(raw) != 8:
            raise SnpFormatError("TCB_VERSION must be 8 bytes")
        if turin_layout:
            if any(raw[4:7]):
                raise SnpFormatError("TCB_VERSION reserved bytes 4..6 are not zero")
            return cls(raw[1], raw[2], raw[3], raw[7], raw[0], bytes(raw))
        if any(raw[2:6]):
            raise SnpFormatError("TCB_VERSION reserved bytes 2..5 are not zero")
        return cls(raw[0], raw[1], raw[6], raw[7], None, bytes(raw))

    @classmethod
    def build(
        cls, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int | None = None
    ) -> TcbVersion:
        """Encode fields; Turin layout when ``fmc`` is not None."""
        for v in (bootloader, tee, snp, microcode, fmc or 0):
            if not 0 <= v <= 0xFF:
                raise SnpFormatError("TCB_VERSION components are single bytes")
        if fmc is not None:
            raw = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        else:
            raw = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
        return cls(bootloader, tee, snp, microcode, fmc, raw)

    def components(self) -> dict[str, int]:
        """The SVNs by name, ``fmc`` included only for the Turin layout."""
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def to_json(self) -> dict[str, object]:
        return {**self.components(), "fmc": self.fmc, "raw": self.raw.hex()}


class _Bit:
    """A read-only boolean view of bit ``n`` of the owner's ``raw`` integer."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __get__(self, obj: object, owner: type | None = None) -> bool:
        raw = getattr(obj, "raw", 0)
        return bool((int(raw) >> self.n) & 1)


@dataclass(frozen=True)
class GuestPolicy:
    """The guest POLICY (8 bytes) chosen by the guest owner at launch."""

    raw: int

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    smt_allowed = _Bit(16)
    reserved_must_be_one = _Bit(17)
    migrate_ma = _Bit(18)
    debug = _Bit(19)
    single_socket = _Bit(20)
    cxl_allowed = _Bit(21)
    mem_aes_256_xts = _Bit(22)
    rapl_dis = _Bit(23)
    ciphertext_hiding = _Bit(24)
    page_swap_disable = _Bit(25)

    def to_json(self) -> dict[str, object]:
        return {
            "raw": f"{self.raw:#x}",
            "abi_major": self.abi_major,
            "abi_minor": self.abi_minor,
            "smt_allowed": self.smt_allowed,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
            "cxl_allowed": self.cxl_allowed,
            "mem_aes_256_xts": self.mem_aes_256_xts,
            "rapl_dis": self.rapl_dis,
            "ciphertext_hiding": self.ciphertext_hiding,
            "page_swap_disable": self.page_swap_disable,
        }


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO (8 bytes): how the host platform is configured."""

    raw: int

    smt_enabled = _Bit(0)
    tsme_enabled = _Bit(1)
    ecc_enabled = _Bit(2)
    rapl_disabled = _Bit(3)
    ciphertext_hiding_enabled = _Bit(4)
    alias_check_complete = _Bit(5)
    tio_enabled = _Bit(7)

    def to_json(self) -> dict[str, object]:
        return {
            "raw": f"{self.raw:#x}",
            "smt_enabled": self.smt_enabled,
            "tsme_enabled": self.tsme_enabled,
            "ecc_enabled": self.ecc_enabled,
            "rapl_disabled": self.rapl_disabled,
            "ciphertext_hiding_enabled": self.ciphertext_hiding_enabled,
            "alias_check_complete": self.alias_check_complete,
            "tio_enabled": self.tio_enabled,
        }


@dataclass(frozen=True)
class KeyInfo:
    """KEY_INFO (4 bytes): author key, chip-id masking and the signing key."""

    raw: int

    author_key_en = _Bit(0)
    mask_chip_key = _Bit(1)

    @property
    def signing_key_raw(self) -> int:
        return (self.raw >> 2) & 0x7

    @property
    def signing_key(self) -> SigningKey | None:
        """None for the reserved encodings 2..6."""
        try:
            return SigningKey(self.signing_key_raw)
        except ValueError:
            return None


@dataclass(frozen=True)
class FirmwareVersion:
    """An SNP firmware version (CURRENT/COMMITTED build, minor, major)."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class ReportSignature:
    """ECDSA P-384 signature, r and s as integers (stored little-endian in the report)."""

    r: int
    s: int
    raw_r: bytes
    raw_s: bytes


def _zero(data: bytes, start: int, end: int, what: str) -> None:
    if any(data[start:end]):
        raise SnpFormatError(f"reserved bytes {start:#x}..{end - 1:#x} ({what}) are not zero")


@dataclass(frozen=True)
class AttestationReport:
    """A parsed SEV-SNP attestation report (not yet verified).

    ``product`` is derived from CPUID_FAM_ID/CPUID_MOD_ID for v3+ reports and is
    None for v2 (no CPUID there: the product then comes from the verified
    certificate chain). TCB fields are decoded in the Turin layout only when
    ``product`` is Turin.
    """

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    key_info: KeyInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current: FirmwareVersion
    committed: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature: ReportSignature
    product: Product | None
    raw: bytes

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000..0x29F)."""
        return self.raw[:SIGNED_REGION_END]

    @property
    def debug(self) -> bool:
        return self.policy.debug

    @classmethod
    def from_bytes(cls, untrusted_raw: bytes) -> AttestationReport:
        """Parse exactly :data:`REPORT_SIZE` bytes: size and version, then the
        version-dependent parts (CPUID and product, mitigation vectors, signature)
        and every reserved range, then one flat table of fixed-offset fields."""
        data = bytes(untrusted_raw)
        if len(data) < REPORT_SIZE:
            raise ReportSizeError(f"report is truncated: {len(data)} bytes, expected {REPORT_SIZE}")
        if len(data) > REPORT_SIZE:
            raise ReportSizeError(f"report is oversized: {len(data)} bytes, expected {REPORT_SIZE}")
        (version,) = struct.unpack_from("<I", data, 0)
        if version not in SUPPORTED_VERSIONS:
            raise UnknownReportVersion(
                f"report version {version} is not supported (supported: 2, 3, 4, 5); "
                "update this verifier for newer SNP firmware"
            )
        guest_svn, policy, vmpl, sig_algo = (
            struct.unpack_from("<I", data, 0x04)[0],
            struct.unpack_from("<Q", data, 0x08)[0],
            struct.unpack_from("<I", data, 0x30)[0],
            struct.unpack_from("<I", data, 0x34)[0],
        )
        plat_info = struct.unpack_from("<Q", data, 0x40)[0]
        key_info = struct.unpack_from("<I", data, 0x48)[0]
        _zero(data, 0x4C, 0x50, "after KEY_INFO")

        product, cpuid = _cpuid_product(data, version)
        turin = product is Product.TURIN

        def tcb(off: int) -> TcbVersion:
            return TcbVersion.from_bytes(data[off : off + 8], turin_layout=turin)

        _zero(data, 0x1EB, 0x1EC, "after CURRENT version")
        _zero(data, 0x1EF, 0x1F0, "after COMMITTED version")
        launch_mit, current_mit = _mitigation_vectors(data, version)
        signature = _signature(data)

        chip_id = data[0x1A0:0x1E0]
        if turin and any(chip_id[8:]):
            raise SnpFormatError("Turin CHIP_ID uses 8 bytes; bytes 8..63 must be zero")

        return cls(
            version=version,
            guest_svn=guest_svn,
            policy=GuestPolicy(policy),
            family_id=data[0x10:0x20],
            image_id=data[0x20:0x30],
            vmpl=vmpl,
            signature_algo=sig_algo,
            current_tcb=tcb(0x38),
            platform_info=PlatformInfo(plat_info),
            key_info=KeyInfo(key_info),
            report_data=data[0x50:0x90],
            measurement=data[0x90:0xC0],
            host_data=data[0xC0:0xE0],
            id_key_digest=data[0xE0:0x110],
            author_key_digest=data[0x110:0x140],
            report_id=data[0x140:0x160],
            report_id_ma=data[0x160:0x180],
            reported_tcb=tcb(0x180),
            cpuid_fam_id=cpuid[0],
            cpuid_mod_id=cpuid[1],
            cpuid_step=cpuid[2],
            chip_id=chip_id,
            committed_tcb=tcb(0x1E0),
            current=FirmwareVersion(data[0x1EA], data[0x1E9], data[0x1E8]),
            committed=FirmwareVersion(data[0x1EE], data[0x1ED], data[0x1EC]),
            launch_tcb=tcb(0x1F0),
            launch_mit_vector=launch_mit,
            current_mit_vector=current_mit,
            signature=signature,
            product=product,
            raw=data,
        )

    def hwid(self) -> bytes:
        """The CHIP_ID as AMD KDS and the VCEK hwID use it (8 bytes on Turin)."""
        return self.chip_id[:8] if self.product is Product.TURIN else self.chip_id


def _cpuid_product(
    data: bytes, version: int
) -> tuple[Product | None, tuple[int | None, int | None, int | None]]:
    """The product from CPUID (version 3+; checked to be a known generation), else unknown."""
    if version < 3:
        _zero(data, 0x188, 0x1A0, "after REPORTED_TCB")
        return None, (None, None, None)
    fam, mod, step = data[0x188], data[0x189], data[0x18A]
    _zero(data, 0x18B, 0x1A0, "after CPUID")
    product = product_from_cpuid(fam, mod)
    if product is None:
        raise UnknownReportVersion(
            f"CPUID family {fam:#x} model {mod:#x} is not a known SEV-SNP generation "
            "(Milan, Genoa, Turin); its TCB encoding cannot be read"
        )
    return product, (fam, mod, step)


def _mitigation_vectors(data: bytes, version: int) -> tuple[int | None, int | None]:
    """LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (version 5+), the rest of the signed region zero."""
    if version < 5:
        _zero(data, 0x1F8, SIGNED_REGION_END, "before SIGNATURE")
        return None, None
    launch: int = struct.unpack_from("<Q", data, 0x1F8)[0]
    current: int = struct.unpack_from("<Q", data, 0x200)[0]
    _zero(data, 0x208, SIGNED_REGION_END, "before SIGNATURE")
    return launch, current


def _signature(data: bytes) -> ReportSignature:
    """The ECDSA P-384 R and S (little-endian, zero-padded) and the zero tail."""
    raw_r = data[0x2A0 : 0x2A0 + _SIG_COMPONENT]
    raw_s = data[0x2E8 : 0x2E8 + _SIG_COMPONENT]
    _zero(data, 0x2A0 + _SIG_SIGNIFICANT, 0x2E8, "SIGNATURE.R padding")
    _zero(data, 0x2E8 + _SIG_SIGNIFICANT, 0x330, "SIGNATURE.S padding")
    _zero(data, 0x330, REPORT_SIZE, "after SIGNATURE")
    return ReportSignature(
        r=int.from_bytes(raw_r, "little"), s=int.from_bytes(raw_s, "little"), raw_r=raw_r, raw_s=raw_s
    )
