"""Intel DCAP quote parsing: versions 3 (SGX), 4 and 5 (TDX), every v5 body type.

Layouts follow Intel's "Intel TDX DCAP Quote Generation Library and Quote
Verification Library" API specification, appendix "Quote Format" (Version 4 and
Version 5 quote formats; the v3 SGX layout is the "Intel SGX ECDSA Quote Library API"
appendix "Quote Format"). Parsing
only checks structure: lengths, known enum values, consistency of the nested
length fields. Authenticity is :mod:`attestation.tdx.verify`'s job.

Real quotes often carry zero padding after the signature data (fixed-size quote
buffers); the length fields are authoritative and trailing bytes are ignored,
but they are kept in :attr:`Quote.trailing` for the curious.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from attestation.tdx.errors import TdxFormatError, UnknownQuoteFormat

__all__ = [
    "ATTESTATION_KEY_TYPE_ECDSA_P256",
    "INTEL_QE_VENDOR_ID",
    "MAX_QUOTE_SIZE",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "BodyType",
    "CertificationData",
    "CertificationDataType",
    "EnclaveReport",
    "Quote",
    "QuoteHeader",
    "QuoteSignatureData",
    "TdReportBody",
]

#: A generous upper bound: real quotes are ~5 KiB, the PCK chain dominates.
MAX_QUOTE_SIZE = 64 * 1024

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_HEADER_LEN = 48
_ENCLAVE_REPORT_LEN = 384
_TD10_LEN = 584
_TD15_LEN = 648


class BodyType(IntEnum):
    """v5 body descriptor types (v3 is implicitly SGX, v4 implicitly TD 1.0)."""

    SGX_ENCLAVE = 1
    TD_REPORT_10 = 2
    TD_REPORT_15 = 3


class CertificationDataType(IntEnum):
    PPID_CLEARTEXT = 1
    PPID_RSA2048_OAEP = 2
    PPID_RSA3072_OAEP = 3
    PCK_LEAF = 4
    PCK_CERT_CHAIN = 5
    QE_REPORT_CERTIFICATION_DATA = 6
    PLATFORM_MANIFEST = 7


class _Reader:
    """Bounds-checked little-endian cursor over untrusted bytes."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise TdxFormatError(
                f"{self._what} truncated: {field} needs {n} bytes at offset {self._pos}, "
                f"{len(self._data) - self._pos} left"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u16(self, field: str) -> int:
        v: int = struct.unpack("<H", self.take(2, field))[0]
        return v

    def u32(self, field: str) -> int:
        v: int = struct.unpack("<I", self.take(4, field))[0]
        return v

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    #: bytes 8..12: reserved for TDX; QE SVN (u16) + PCE SVN (u16) for SGX v3
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> QuoteHeader:
        r = _Reader(untrusted, "quote header")
        version = r.u16("version")
        akt = r.u16("attestation key type")
        tee = r.u32("tee type")
        reserved = r.take(4, "reserved")
        vendor = r.take(16, "qe vendor id")
        user = r.take(20, "user data")
        return cls(version, akt, tee, reserved, vendor, user)

    @property
    def qe_svn(self) -> int:
        v: int = struct.unpack_from("<H", self.reserved, 0)[0]
        return v

    @property
    def pce_svn(self) -> int:
        v: int = struct.unpack_from("<H", self.reserved, 2)[0]
        return v


@dataclass(frozen=True)
class EnclaveReport:
    """SGX REPORT body (384 bytes): an SGX quote's body, and every QE report."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    raw: bytes

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> EnclaveReport:
        if len(untrusted) != _ENCLAVE_REPORT_LEN:
            raise TdxFormatError(f"SGX report body must be 384 bytes, got {len(untrusted)}")
        b = untrusted
        (misc,) = struct.unpack_from("<I", b, 16)
        prod, svn = struct.unpack_from("<HH", b, 256)
        return cls(
            cpu_svn=b[0:16],
            misc_select=misc,
            attributes=b[48:64],
            mr_enclave=b[64:96],
            mr_signer=b[128:160],
            isv_prod_id=prod,
            isv_svn=svn,
            report_data=b[320:384],
            raw=b,
        )

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)


# TDATTRIBUTES bits (TDX module spec; trustee's claim names)
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
TD_ATTR_PKS = 1 << 30
TD_ATTR_KL = 1 << 31
TD_ATTR_PERFMON = 1 << 63
_TD_ATTR_KNOWN = TD_ATTR_DEBUG | TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_PKS | TD_ATTR_KL | TD_ATTR_PERFMON


@dataclass(frozen=True)
class TdReportBody:
    """The TD report body of a v4/v5 quote (TD 1.0: 584 bytes, TD 1.5: 648)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    #: TD 1.5 only
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> TdReportBody:
        n = len(untrusted)
        if n not in (_TD10_LEN, _TD15_LEN):
            raise TdxFormatError(f"TD report body must be 584 or 648 bytes, got {n}")
        b = untrusted
        rtmrs = (b[328:376], b[376:424], b[424:472], b[472:520])
        return cls(
            tee_tcb_svn=b[0:16],
            mr_seam=b[16:64],
            mr_signer_seam=b[64:112],
            seam_attributes=b[112:120],
            td_attributes=b[120:128],
            xfam=b[128:136],
            mr_td=b[136:184],
            mr_config_id=b[184:232],
            mr_owner=b[232:280],
            mr_owner_config=b[280:328],
            rtmrs=rtmrs,
            report_data=b[520:584],
            tee_tcb_svn2=b[584:600] if n == _TD15_LEN else None,
            mr_service_td=b[600:648] if n == _TD15_LEN else None,
        )

    @property
    def td_attributes_int(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_int & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_int & TD_ATTR_SEPT_VE_DISABLE)

    @property
    def unknown_td_attribute_bits(self) -> int:
        return self.td_attributes_int & ~_TD_ATTR_KNOWN


@dataclass(frozen=True)
class CertificationData:
    type: int
    data: bytes

    def pck_chain_pem(self) -> bytes:
        """The PEM PCK chain of a type-5 certification data (NULs stripped)."""
        if self.type != CertificationDataType.PCK_CERT_CHAIN:
            raise TdxFormatError(
                f"certification data type {self.type} carries no PCK chain (need type 5); "
                "fetch the PCK certificate from a PCCS"
            )
        return self.data.rstrip(b"\x00")


@dataclass(frozen=True)
class QuoteSignatureData:
    """ECDSA-P256 quote signature data with the QE report certification data."""

    signature: bytes  # r || s, 64 bytes
    attestation_key: bytes  # x || y, 64 bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes  # r || s by the PCK key
    qe_auth_data: bytes
    certification_data: CertificationData


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    #: 1 = SGX enclave, 2 = TD 1.0, 3 = TD 1.5 (derived for v3/v4)
    body_type: BodyType
    body: TdReportBody | EnclaveReport
    signature_data: QuoteSignatureData
    #: header (+ v5 body descriptor) + body: the bytes the attestation key signs
    signed_bytes: bytes
    trailing: bytes

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReportBody)

    @property
    def td_body(self) -> TdReportBody:
        if not isinstance(self.body, TdReportBody):
            raise TdxFormatError("not a TDX quote (SGX enclave report body)")
        return self.body

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @classmethod
    def from_bytes(cls, untrusted_quote: bytes) -> Quote:
        if len(untrusted_quote) > MAX_QUOTE_SIZE:
            raise TdxFormatError(f"quote larger than {MAX_QUOTE_SIZE} bytes")
        r = _Reader(untrusted_quote, "quote")
        header = QuoteHeader.from_bytes(r.take(_HEADER_LEN, "header"))
        if header.attestation_key_type != ATTESTATION_KEY_TYPE_ECDSA_P256:
            raise UnknownQuoteFormat(
                f"unsupported attestation key type {header.attestation_key_type} (need 2, ECDSA P-256)"
            )
        body: TdReportBody | EnclaveReport
        if header.version == 3:
            if header.tee_type != TEE_TYPE_SGX:
                raise TdxFormatError("version 3 quote with a non-SGX TEE type")
            body_type = BodyType.SGX_ENCLAVE
            body = EnclaveReport.from_bytes(r.take(_ENCLAVE_REPORT_LEN, "SGX report body"))
        elif header.version == 4:
            if header.tee_type != TEE_TYPE_TDX:
                raise TdxFormatError(f"version 4 quote with TEE type {header.tee_type:#x} (need TDX)")
            body_type = BodyType.TD_REPORT_10
            body = TdReportBody.from_bytes(r.take(_TD10_LEN, "TD report body"))
        elif header.version == 5:
            raw_type = r.u16("body type")
            size = r.u32("body size")
            try:
                body_type = BodyType(raw_type)
            except ValueError as exc:
                raise TdxFormatError(f"unknown v5 quote body type {raw_type}") from exc
            want = {
                BodyType.SGX_ENCLAVE: _ENCLAVE_REPORT_LEN,
                BodyType.TD_REPORT_10: _TD10_LEN,
                BodyType.TD_REPORT_15: _TD15_LEN,
            }[body_type]
            if size != want:
                raise TdxFormatError(f"v5 body type {raw_type} must be {want} bytes, header says {size}")
            want_tee = TEE_TYPE_SGX if body_type == BodyType.SGX_ENCLAVE else TEE_TYPE_TDX
            if header.tee_type != want_tee:
                raise TdxFormatError("v5 quote body type does not match the header's TEE type")
            raw_body = r.take(size, "report body")
            body = (
                EnclaveReport.from_bytes(raw_body)
                if body_type == BodyType.SGX_ENCLAVE
                else TdReportBody.from_bytes(raw_body)
            )
        else:
            raise UnknownQuoteFormat(f"unsupported quote version {header.version} (need 3, 4 or 5)")
        signed_len = r.pos
        sig_len = r.u32("signature data length")
        sig_data = _parse_signature_data(r.take(sig_len, "signature data"), nested=header.version >= 4)
        return cls(
            header=header,
            body_type=body_type,
            body=body,
            signature_data=sig_data,
            signed_bytes=untrusted_quote[:signed_len],
            trailing=r.rest(),
        )


def _parse_signature_data(untrusted: bytes, *, nested: bool) -> QuoteSignatureData:
    r = _Reader(untrusted, "quote signature data")
    signature = r.take(64, "quote signature")
    att_key = r.take(64, "attestation key")
    if nested:
        ctype = r.u16("certification data type")
        csize = r.u32("certification data size")
        if ctype != CertificationDataType.QE_REPORT_CERTIFICATION_DATA:
            raise TdxFormatError(
                f"unsupported outer certification data type {ctype} (need 6, QE report certification data)"
            )
        inner = _Reader(r.take(csize, "QE report certification data"), "QE report certification data")
    else:
        inner = r
    qe_report = EnclaveReport.from_bytes(inner.take(_ENCLAVE_REPORT_LEN, "QE report"))
    qe_sig = inner.take(64, "QE report signature")
    auth_len = inner.u16("QE auth data size")
    auth = inner.take(auth_len, "QE auth data")
    cert_type = inner.u16("certification data type")
    cert_size = inner.u32("certification data size")
    try:
        CertificationDataType(cert_type)
    except ValueError as exc:
        raise TdxFormatError(f"unknown certification data type {cert_type}") from exc
    cert_data = inner.take(cert_size, "certification data")
    return QuoteSignatureData(
        signature=signature,
        attestation_key=att_key,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        certification_data=CertificationData(cert_type, cert_data),
    )
