"""SNP evidence as trustee exchanges it, and the host certificate table.

Evidence JSON (guest-components ``attester/src/snp`` → trustee
``deps/verifier/src/snp``)::

    {"attestation_report": <virtee/sev serde of AttestationReport>,
     "cert_chain": [{"cert_type": "VCEK", "data": [<bytes as ints>]}, ...] | null}

The report is a field-by-field JSON object, not raw bytes; to check the
signature the 1184-byte layout is rebuilt with reserved bytes zero (byte-exact:
the signature of trustee's e2e sample verifies over the rebuilt bytes).

The certificate table (configfs-tsm ``auxblob``, ``SNP_GET_EXT_REPORT``) is an
array of 24-byte entries ``{GUID (RFC 4122 byte order), u32 offset, u32
length}`` ended by an all-zero entry; offsets count from the table start.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attestation.snp.errors import SnpFormatError, UnknownReportVersion
from attestation.snp.report import (
    REPORT_SIZE,
    SUPPORTED_VERSIONS,
    AttestationReport,
    Product,
    TcbVersion,
    product_from_cpuid,
)
from coco_common.strict_json import strict_loads

__all__ = [
    "CERT_GUIDS",
    "MAX_CERT_TABLE_SIZE",
    "MAX_EVIDENCE_JSON",
    "CertTableEntry",
    "SnpEvidence",
    "build_cert_table",
    "parse_cert_table",
    "report_from_serde",
    "report_to_serde",
]

#: Upper bound for evidence JSON (a report is ~7 KiB as JSON, certs ~5 KiB each).
MAX_EVIDENCE_JSON = 256 * 1024
#: Upper bound for a certificate table.
MAX_CERT_TABLE_SIZE = 64 * 1024
_MAX_CERT_ENTRIES = 32
_MAX_CERT_SIZE = 16 * 1024

#: cert_type name (as virtee/sev serializes it) → GUID in the host table.
CERT_GUIDS: dict[str, uuid.UUID] = {
    "ARK": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    "ASK": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "VCEK": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "VLEK": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "CRL": uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
}
_GUID_NAMES = {v: k for k, v in CERT_GUIDS.items()}


@dataclass(frozen=True)
class CertTableEntry:
    """One certificate from the evidence or the host table; ``cert_type`` is
    ``"ARK"|"ASK"|"VCEK"|"VLEK"|"CRL"`` or ``"OTHER"`` with ``guid`` set."""

    cert_type: str
    data: bytes
    guid: uuid.UUID

    @classmethod
    def of(cls, cert_type: str, data: bytes) -> CertTableEntry:
        if cert_type not in CERT_GUIDS:
            raise SnpFormatError(f"unknown cert_type {cert_type[:16]!r}")
        return cls(cert_type, bytes(data), CERT_GUIDS[cert_type])

    def to_json(self) -> dict[str, Any]:
        """virtee/sev serde form: ``{"cert_type": "VCEK", "data": [...]}``,
        unknown GUIDs as ``{"cert_type": {"OTHER": "<uuid>"}, ...}``."""
        ct: Any = self.cert_type if self.cert_type != "OTHER" else {"OTHER": str(self.guid)}
        return {"cert_type": ct, "data": list(self.data)}


def parse_cert_table(untrusted_table: bytes) -> tuple[CertTableEntry, ...]:
    """Parse a GHCB certificate table; empty input gives an empty tuple."""
    data = bytes(untrusted_table)
    if len(data) > MAX_CERT_TABLE_SIZE:
        raise SnpFormatError(f"certificate table exceeds {MAX_CERT_TABLE_SIZE} bytes")
    out: list[CertTableEntry] = []
    off = 0
    while True:
        if off + 24 > len(data):
            if not data or all(b == 0 for b in data[off:]):
                break  # tolerate an absent terminator only at the very end of a zero tail
            raise SnpFormatError("certificate table is truncated")
        guid_b = data[off : off + 16]
        c_off, c_len = struct.unpack_from("<II", data, off + 16)
        if not any(guid_b) and c_off == 0 and c_len == 0:
            break
        if len(out) >= _MAX_CERT_ENTRIES:
            raise SnpFormatError("certificate table has too many entries")
        if c_len > _MAX_CERT_SIZE or c_off + c_len > len(data) or c_off < off + 24:
            raise SnpFormatError("certificate table entry points outside the table")
        guid = uuid.UUID(bytes=guid_b)
        name = _GUID_NAMES.get(guid, "OTHER")
        out.append(CertTableEntry(name, data[c_off : c_off + c_len], guid))
        off += 24
    return tuple(out)


def build_cert_table(entries: Sequence[CertTableEntry]) -> bytes:
    """Inverse of :func:`parse_cert_table` (used by fakes and tests)."""
    header = 24 * (len(entries) + 1)
    body = b""
    index = b""
    for e in entries:
        index += e.guid.bytes + struct.pack("<II", header + len(body), len(e.data))
        body += e.data
    return index + b"\0" * 24 + body


# ---- virtee/sev serde <-> report bytes -------------------------------------------------

_TCB_KEYS = {"fmc", "bootloader", "tee", "snp", "microcode"}
_VERSION_KEYS = {"major", "minor", "build"}
_REQUIRED = {
    "version",
    "guest_svn",
    "policy",
    "family_id",
    "image_id",
    "vmpl",
    "sig_algo",
    "current_tcb",
    "plat_info",
    "key_info",
    "report_data",
    "measurement",
    "host_data",
    "id_key_digest",
    "author_key_digest",
    "report_id",
    "report_id_ma",
    "reported_tcb",
    "chip_id",
    "committed_tcb",
    "current",
    "committed",
    "launch_tcb",
    "signature",
}
_OPTIONAL = {"cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "launch_mit_vector", "current_mit_vector"}


def _int(obj: Mapping[str, Any], key: str, bits: int) -> int:
    v = obj.get(key)
    if type(v) is not int or not 0 <= v < (1 << bits):
        raise SnpFormatError(f"attestation_report.{key} must be an unsigned {bits}-bit integer")
    return v


def _byte_list(v: Any) -> bytes | None:
    """A JSON array of integers 0..255 as bytes (bools and floats refused), else None."""
    if not isinstance(v, list) or (v and set(map(type, v)) != {int}):
        return None
    try:
        return bytes(v)
    except ValueError:
        return None


def _bytes(obj: Mapping[str, Any], key: str, size: int) -> bytes:
    b = _byte_list(obj.get(key))
    if b is None or len(b) != size:
        raise SnpFormatError(f"attestation_report.{key} must be an array of {size} bytes")
    return b


def _exact_keys(obj: Any, required: set[str], optional: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise SnpFormatError(f"{what} must be a JSON object")
    keys = set(obj)
    missing = required - keys
    unknown = keys - required - optional
    if missing:
        raise SnpFormatError(f"{what} lacks {sorted(missing)[0]!r}")
    if unknown:
        raise SnpFormatError(f"{what} has unknown key {sorted(unknown)[0][:40]!r}")
    return obj


def _tcb(obj: Mapping[str, Any], key: str, turin: bool) -> bytes:
    t = _exact_keys(obj.get(key), _TCB_KEYS - {"fmc"}, {"fmc"}, f"attestation_report.{key}")
    fmc = t.get("fmc")
    if turin and type(fmc) is not int:
        raise SnpFormatError(f"attestation_report.{key}.fmc is required for Turin")
    if not turin and fmc is not None:
        raise SnpFormatError(f"attestation_report.{key}.fmc must be null before Turin")
    vals = {k: _int(t, k, 8) for k in ("bootloader", "tee", "snp", "microcode")}
    return TcbVersion.build(fmc=fmc if turin else None, **vals).raw


def report_from_serde(untrusted: Any) -> AttestationReport:
    """Rebuild and parse a report from virtee/sev's serde JSON object."""
    r = _exact_keys(untrusted, _REQUIRED, _OPTIONAL, "attestation_report")
    version = _int(r, "version", 32)
    if version not in SUPPORTED_VERSIONS:
        raise UnknownReportVersion(f"report version {version} is not supported (supported: 2, 3, 4, 5)")
    buf = bytearray(REPORT_SIZE)
    struct.pack_into("<I", buf, 0x00, version)
    struct.pack_into("<I", buf, 0x04, _int(r, "guest_svn", 32))
    struct.pack_into("<Q", buf, 0x08, _int(r, "policy", 64))
    buf[0x10:0x20] = _bytes(r, "family_id", 16)
    buf[0x20:0x30] = _bytes(r, "image_id", 16)
    struct.pack_into("<I", buf, 0x30, _int(r, "vmpl", 32))
    struct.pack_into("<I", buf, 0x34, _int(r, "sig_algo", 32))
    struct.pack_into("<Q", buf, 0x40, _int(r, "plat_info", 64))
    struct.pack_into("<I", buf, 0x48, _int(r, "key_info", 32))
    buf[0x50:0x90] = _bytes(r, "report_data", 64)
    buf[0x90:0xC0] = _bytes(r, "measurement", 48)
    buf[0xC0:0xE0] = _bytes(r, "host_data", 32)
    buf[0xE0:0x110] = _bytes(r, "id_key_digest", 48)
    buf[0x110:0x140] = _bytes(r, "author_key_digest", 48)
    buf[0x140:0x160] = _bytes(r, "report_id", 32)
    buf[0x160:0x180] = _bytes(r, "report_id_ma", 32)
    product: Product | None = None
    if version >= 3:
        fam, mod, step = (_int(r, k, 8) for k in ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step"))
        buf[0x188:0x18B] = bytes([fam, mod, step])
        product = product_from_cpuid(fam, mod)
    else:
        for k in ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step"):
            if r.get(k) is not None:
                raise SnpFormatError(f"attestation_report.{k} must be absent or null for version 2")
    turin = product is Product.TURIN
    buf[0x38:0x40] = _tcb(r, "current_tcb", turin)
    buf[0x180:0x188] = _tcb(r, "reported_tcb", turin)
    buf[0x1E0:0x1E8] = _tcb(r, "committed_tcb", turin)
    buf[0x1F0:0x1F8] = _tcb(r, "launch_tcb", turin)
    buf[0x1A0:0x1E0] = _bytes(r, "chip_id", 64)
    for key, off in (("current", 0x1E8), ("committed", 0x1EC)):
        v = _exact_keys(r.get(key), _VERSION_KEYS, set(), f"attestation_report.{key}")
        buf[off : off + 3] = bytes([_int(v, "build", 8), _int(v, "minor", 8), _int(v, "major", 8)])
    if version >= 5:
        # Option<u64> in virtee/sev; serializers that predate the field omit it (= zero bytes)
        for key, off in (("launch_mit_vector", 0x1F8), ("current_mit_vector", 0x200)):
            struct.pack_into("<Q", buf, off, 0 if r.get(key) is None else _int(r, key, 64))
    else:
        for k in ("launch_mit_vector", "current_mit_vector"):
            if r.get(k) is not None:
                raise SnpFormatError(f"attestation_report.{k} must be absent or null before version 5")
    sig = _exact_keys(r.get("signature"), {"r", "s"}, set(), "attestation_report.signature")
    buf[0x2A0:0x2E8] = _bytes(sig, "r", 72)
    buf[0x2E8:0x330] = _bytes(sig, "s", 72)
    return AttestationReport.from_bytes(bytes(buf))


def _tcb_serde(t: TcbVersion) -> dict[str, Any]:
    return {"fmc": t.fmc, "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode}


def report_to_serde(report: AttestationReport) -> dict[str, Any]:
    """The virtee/sev serde JSON object for ``report`` (what guest-components sends)."""
    out: dict[str, Any] = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy.raw,
        "family_id": list(report.family_id),
        "image_id": list(report.image_id),
        "vmpl": report.vmpl,
        "sig_algo": report.signature_algo,
        "current_tcb": _tcb_serde(report.current_tcb),
        "plat_info": report.platform_info.raw,
        "key_info": report.key_info.raw,
        "report_data": list(report.report_data),
        "measurement": list(report.measurement),
        "host_data": list(report.host_data),
        "id_key_digest": list(report.id_key_digest),
        "author_key_digest": list(report.author_key_digest),
        "report_id": list(report.report_id),
        "report_id_ma": list(report.report_id_ma),
        "reported_tcb": _tcb_serde(report.reported_tcb),
    }
    # Option<u8> in virtee/sev: null for version 2
    out["cpuid_fam_id"] = report.cpuid_fam_id
    out["cpuid_mod_id"] = report.cpuid_mod_id
    out["cpuid_step"] = report.cpuid_step
    out["chip_id"] = list(report.chip_id)
    out["committed_tcb"] = _tcb_serde(report.committed_tcb)
    out["current"] = {
        "major": report.current.major,
        "minor": report.current.minor,
        "build": report.current.build,
    }
    out["committed"] = {
        "major": report.committed.major,
        "minor": report.committed.minor,
        "build": report.committed.build,
    }
    out["launch_tcb"] = _tcb_serde(report.launch_tcb)
    if report.version >= 5:
        out["launch_mit_vector"] = report.launch_mit_vector
        out["current_mit_vector"] = report.current_mit_vector
    out["signature"] = {"r": list(report.signature.raw_r), "s": list(report.signature.raw_s)}
    return out


@dataclass(frozen=True)
class SnpEvidence:
    """Parsed trustee SNP evidence: the report and the certificates sent with it."""

    report: AttestationReport
    cert_chain: tuple[CertTableEntry, ...] | None

    @classmethod
    def from_json(cls, untrusted: Any) -> SnpEvidence:
        """Accepts the decoded JSON value, or its text/bytes."""
        if isinstance(untrusted, bytearray):
            untrusted = bytes(untrusted)
        if isinstance(untrusted, str | bytes):
            what = "evidence is not valid JSON"
            untrusted = strict_loads(untrusted, limit=MAX_EVIDENCE_JSON, error=SnpFormatError, what=what)
        obj = untrusted
        ev = _exact_keys(obj, {"attestation_report"}, {"cert_chain"}, "SNP evidence")
        report = report_from_serde(ev["attestation_report"])
        chain_raw = ev.get("cert_chain")
        if chain_raw is None:
            return cls(report, None)
        if not isinstance(chain_raw, list) or len(chain_raw) > _MAX_CERT_ENTRIES:
            raise SnpFormatError("cert_chain must be null or an array of at most 32 entries")
        chain: list[CertTableEntry] = []
        for i, item in enumerate(chain_raw):
            e = _exact_keys(item, {"cert_type", "data"}, set(), f"cert_chain[{i}]")
            ct = e["cert_type"]
            data = e["data"]
            if not isinstance(data, list) or len(data) > _MAX_CERT_SIZE:
                raise SnpFormatError(f"cert_chain[{i}].data must be a byte array of at most 16 KiB")
            blob = _byte_list(data)
            if blob is None:
                raise SnpFormatError(f"cert_chain[{i}].data must contain bytes")
            if isinstance(ct, str) and ct in CERT_GUIDS:
                chain.append(CertTableEntry.of(ct, blob))
            elif isinstance(ct, dict) and set(ct) == {"OTHER"} and isinstance(ct["OTHER"], str):
                try:
                    guid = uuid.UUID(ct["OTHER"])
                except ValueError as exc:
                    raise SnpFormatError(f"cert_chain[{i}].cert_type OTHER is not a UUID") from exc
                chain.append(CertTableEntry("OTHER", blob, guid))
            else:
                raise SnpFormatError(f"cert_chain[{i}].cert_type is not a known certificate type")
        return cls(report, tuple(chain))

    def to_json(self) -> dict[str, Any]:
        chain = None if self.cert_chain is None else [e.to_json() for e in self.cert_chain]
        return {"attestation_report": report_to_serde(self.report), "cert_chain": chain}
