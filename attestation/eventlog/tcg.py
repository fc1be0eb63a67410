"""TCG2 crypto-agile event logs (CCEL, and CCEL with the AA event log appended):
parse, describe each event as trustee does, and replay into measurement registers.

:func:`parse_event_log` yields :class:`EventLogEntry` records; ``to_trustee_json``
renders them exactly as trustee's ``eventlog`` crate serializes them (the
``uefi_event_logs`` claim; golden files: trustee ``deps/eventlog/test_data/*_out.json``
@ 78962cd416dcc8a32f9377e0066a28fe21420f69, copied into the tests' fixtures). Event data that
trustee's per-type parsers reject (for example a non-UTF-8 EV_EFI_ACTION)
makes the whole log invalid, as in trustee.

Replay: each register starts at zero; ``R = H(R || digest)`` for every event of
that MR index except EV_NO_ACTION ones (TCG PC Client spec: those are never
extended). CC MR index 1..4 = TDX RTMR0..3; index 0 is MRTD.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes

from attestation.eventlog.errors import EventLogFormatError, EventLogReplayError
from coco_common.strict_json import strict_loads

__all__ = [
    "ALG_NAMES",
    "EV_EVENT_TAG",
    "EV_NO_ACTION",
    "MAX_EVENT_LOG_SIZE",
    "DigestValue",
    "EventLogEntry",
    "ParsedEventLog",
    "hash_alg",
    "parse_event_log",
]

MAX_EVENT_LOG_SIZE = 16 * 1024 * 1024
EV_NO_ACTION = 0x3
EV_EVENT_TAG = 0x6
AAEL_TAGGED_EVENT_ID = 0x4141454C


#: TCG algorithm id -> (trustee name, digest size)
ALG_NAMES: dict[int, tuple[str, int | None]] = {
    0x1: ("RSA", None),
    0x3: ("TDES", None),
    0x4: ("SHA-1", 20),
    0xB: ("SHA-256", 32),
    0xC: ("SHA-384", 48),
    0xD: ("SHA-512", 64),
    0x12: ("SM3", 32),
}

_EVENT_TYPES: dict[int, str] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}


def hash_alg(alg_id: int) -> hashes.HashAlgorithm:
    algs: dict[int, hashes.HashAlgorithm] = {
        0x4: hashes.SHA1(),  # noqa: S303 - TCG logs may carry SHA-1 banks; only compared, never trusted
        0xB: hashes.SHA256(),
        0xC: hashes.SHA384(),
        0xD: hashes.SHA512(),
        0x12: hashes.SM3(),
    }
    try:
        return algs[alg_id]
    except KeyError as exc:
        raise EventLogFormatError(f"unsupported digest algorithm {alg_id:#x}") from exc


def _digest(alg_id: int, data: bytes) -> bytes:
    if alg_id == 0xC:
        return hashlib.sha384(data).digest()
    h = hashes.Hash(hash_alg(alg_id))
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class DigestValue:
    alg: int
    digest: bytes


@dataclass(frozen=True)
class EventLogEntry:
    index: int
    event_type: int
    digests: tuple[DigestValue, ...]
    event: bytes
    details: Mapping[str, Any]
    digest_matches_event: bool

    @property
    def type_name(self) -> str:
        return _EVENT_TYPES[self.event_type]

    def to_trustee_json(self) -> dict[str, Any]:
        return {
            "details": dict(self.details),
            "digest_matches_event": self.digest_matches_event,
            "digests": [{"alg": ALG_NAMES[d.alg][0], "digest": d.digest.hex()} for d in self.digests],
            "event": base64.b64encode(self.event).decode(),
            "index": self.index,
            "type_name": self.type_name,
        }


@dataclass(frozen=True)
class ParsedEventLog:
    entries: tuple[EventLogEntry, ...]
    #: digest sizes declared by the Spec ID event
    algorithms: Mapping[int, int]

    def to_trustee_json(self) -> list[dict[str, Any]]:
        return [e.to_trustee_json() for e in self.entries]

    def replay(self, index: int, alg: int = 0xC) -> bytes:
        size = ALG_NAMES.get(alg, ("", None))[1]
        if size is None:
            raise EventLogFormatError(f"cannot replay with algorithm {alg:#x}")
        value = bytes(size)
        for e in self.entries:
            if e.index != index or e.event_type == EV_NO_ACTION:
                continue
            for d in e.digests:
                if d.alg == alg:
                    value = _digest(alg, value + d.digest)
        return value

    def check_registers(self, expected: Mapping[int, bytes], alg: int = 0xC) -> None:
        """Raise :class:`EventLogReplayError` unless every ``{mr_index: value}`` replays."""
        for index, want in sorted(expected.items()):
            got = self.replay(index, alg)
            if got != want:
                raise EventLogReplayError(
                    f"event log does not replay to the quote: CC MR {index} computes {got.hex()[:16]}..., "
                    f"quote has {want.hex()[:16]}..."
                )


class _R:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.i + n > len(self.d):
            raise EventLogFormatError(f"event log truncated reading {what} at offset {self.i}")
        out = self.d[self.i : self.i + n]
        self.i += n
        return out

    def u16(self, what: str) -> int:
        v: int = struct.unpack("<H", self.take(2, what))[0]
        return v

    def u32(self, what: str) -> int:
        v: int = struct.unpack("<I", self.take(4, what))[0]
        return v


def parse_event_log(untrusted_log: bytes) -> ParsedEventLog:
    if len(untrusted_log) > MAX_EVENT_LOG_SIZE:
        raise EventLogFormatError(f"event log larger than {MAX_EVENT_LOG_SIZE} bytes")
    r = _R(untrusted_log)
    r.u32("first event MR index")
    first_type = r.u32("first event type")
    r.take(20, "first event SHA-1 digest")
    size = r.u32("first event size")
    sizes: dict[int, int] = {}
    if first_type != EV_NO_ACTION:
        raise EventLogFormatError("event log does not start with a Spec ID (EV_NO_ACTION) event")
    spec = r.take(size, "Spec ID event")
    # The signature "Spec ID Event03" is not checked: guest-components' fixed
    # header for CCEL-less logs leaves it zeroed, and trustee accepts that.
    if len(spec) < 29:
        raise EventLogFormatError("first event is too short for a Spec ID event (not a crypto-agile log)")
    s = _R(spec)
    s.take(24, "spec id header")
    count = s.u32("algorithm count")
    for _ in range(count):
        alg = s.u16("algorithm id")
        dsize = s.u16("digest size")
        if alg not in ALG_NAMES:
            raise EventLogFormatError(f"unknown algorithm {alg:#x} in Spec ID event")
        sizes[alg] = dsize
    vlen = s.take(1, "vendor info size")[0]
    s.take(vlen, "vendor info")
    if s.i != len(spec):
        raise EventLogFormatError("Spec ID event size does not match its contents")
    entries: list[EventLogEntry] = []
    while r.i < len(untrusted_log):
        if r.i + 8 > len(untrusted_log):
            raise EventLogFormatError("event log truncated: no end marker")
        marker = untrusted_log[r.i : r.i + 8]
        if marker in (b"\xff" * 8, b"\x00" * 8):
            break
        index = r.u32("MR index")
        etype = r.u32("event type")
        if etype not in _EVENT_TYPES:
            raise EventLogFormatError(f"unknown event type {etype:#x} at offset {r.i - 4}")
        n = r.u32("digest count")
        digests = []
        for _ in range(n):
            alg = r.u16("digest algorithm")
            if alg not in sizes:
                raise EventLogFormatError(f"digest algorithm {alg:#x} not declared in the Spec ID event")
            digests.append(DigestValue(alg, r.take(sizes[alg], "digest")))
        esize = r.u32("event size")
        event = r.take(esize, "event data")
        matches = True
        for d in digests:
            if d.alg not in (0x4, 0xB, 0xC, 0xD, 0x12):
                raise EventLogFormatError(f"cannot hash with algorithm {d.alg:#x}")
            if _digest(d.alg, event) != d.digest:
                matches = False
                break
        entries.append(
            EventLogEntry(
                index=index,
                event_type=etype,
                digests=tuple(digests),
                event=event,
                details=_details(etype, event),
                digest_matches_event=matches,
            )
        )
    return ParsedEventLog(tuple(entries), sizes)


# --- per-type event descriptions (trustee's EventDetails) -----------------


def _utf8(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventLogFormatError(f"{what}: event data is not UTF-8") from exc


def _details(etype: int, data: bytes) -> dict[str, Any]:
    name = _EVENT_TYPES[etype]
    if name in (
        "EV_POST_CODE",
        "EV_ACTION",
        "EV_COMPACT_HASH",
        "EV_OMIT_BOOT_DEVICE_EVENTS",
        "EV_EFI_ACTION",
    ):
        return {"string": _utf8(data, name)}
    if name == "EV_EVENT_TAG":
        return _event_tag(data)
    if name == "EV_PLATFORM_CONFIG_FLAGS":
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raw = ""
        raw = raw.replace("\x10", " ")
        return {"string": "".join(c for c in raw if not _is_control(c))}
    if name == "EV_IPL":
        return {"string": _ipl(data)}
    if name in (
        "EV_EFI_VARIABLE_DRIVER_CONFIG",
        "EV_EFI_VARIABLE_BOOT",
        "EV_EFI_VARIABLE_BOOT2",
        "EV_EFI_VARIABLE_AUTHORITY",
    ):
        return _efi_variable(data)
    if name == "EV_EFI_BOOT_SERVICES_APPLICATION":
        return _boot_services_app(data)
    if name in ("EV_EFI_PLATFORM_FIRMWARE_BLOB2", "EV_EFI_HANDOFF_TABLES2"):
        if not data:
            raise EventLogFormatError(f"{name}: empty event data")
        length = data[0]
        if length < 1 or len(data) < length:
            raise EventLogFormatError(f"{name}: description length out of range")
        return {"string": _utf8(data[1:length], name)}
    return {}


def _is_control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def _event_tag(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise EventLogFormatError("EV_EVENT_TAG: too short")
    tag_id, size = struct.unpack_from("<II", data, 0)
    if 8 + size > len(data):
        raise EventLogFormatError("EV_EVENT_TAG: tagged data exceeds the event")
    body = data[8 : 8 + size]
    details: dict[str, Any] = {"string": body.decode("utf-8", errors="replace").replace("\x00", "")}
    if tag_id == AAEL_TAGGED_EVENT_ID:
        text = _utf8(body, "AAEL event")
        parts = text.split(" ", 2)
        if len(parts) != 3:
            raise EventLogFormatError("AAEL event must be '<domain> <operation> <content>'")
        domain, operation, content_text = parts
        try:  # strict: no NaN or duplicate keys reach the claims; anything else stays text
            content: Any = strict_loads(content_text)
        except ValueError:
            content = content_text
        details["data"] = {"domain": domain, "operation": operation, "content": content}
        details["unicode_name"] = "AAEL"
    return details


def _ipl(data: bytes) -> str:
    if len(data) < 2:
        raise EventLogFormatError("EV_IPL: too short")
    if data[:2] == b"\x2e\x00":
        n = len(data) - 2
        if n == 0 or n % 2:
            raise EventLogFormatError("EV_IPL: not a UTF-16 string")
        return data[2:n].decode("utf-16-le", errors="replace")
    cut = data.find(b"\x00")
    head = data if cut < 0 else data[:cut]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


def _efi_variable(data: bytes) -> dict[str, Any]:
    if len(data) < 32:
        raise EventLogFormatError("EFI variable event: too short")
    guid = data[:16]
    name_len, data_len = struct.unpack_from("<QQ", data, 16)
    i = 32
    nbytes = name_len * 2
    if i + nbytes > len(data):
        raise EventLogFormatError("EFI variable event: name out of bounds")
    try:
        name = data[i : i + nbytes].decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise EventLogFormatError("EFI variable event: name is not UTF-16") from exc
    i += nbytes
    if data_len:
        if i + data_len > len(data):
            raise EventLogFormatError("EFI variable event: data out of bounds")
        vdata = base64.b64encode(data[i : i + data_len]).decode()
    else:
        vdata = ""
    g = guid.hex()
    return {
        "unicode_name": name,
        "unicode_name_length": name_len,
        "variable_data": vdata,
        "variable_data_length": data_len,
        "variable_name": f"{g[0:8]}-{g[8:12]}-{g[12:16]}-{g[16:20]}-{g[20:32]}",
    }


def _boot_services_app(data: bytes) -> dict[str, Any]:
    if len(data) < 32:
        raise EventLogFormatError("EV_EFI_BOOT_SERVICES_APPLICATION: too short")
    (dp_len,) = struct.unpack_from("<Q", data, 24)
    if dp_len == 0:
        return {}
    if dp_len < 4:
        raise EventLogFormatError("EV_EFI_BOOT_SERVICES_APPLICATION: device path too short")
    end = 32 + dp_len - 4  # the 4-byte end node is not described
    if len(data) < end:
        raise EventLogFormatError("EV_EFI_BOOT_SERVICES_APPLICATION: device path out of bounds")
    dp = data[32:end]
    if len(dp) < 4:
        raise EventLogFormatError("EV_EFI_BOOT_SERVICES_APPLICATION: device path too short")
    paths: list[str] = []
    while dp:
        if len(dp) < 4:
            raise EventLogFormatError("device path node truncated")
        t, st = dp[0], dp[1]
        (ln,) = struct.unpack_from("<H", dp, 2)
        if ln < 4 or len(dp) < ln:
            raise EventLogFormatError("device path node length out of range")
        paths.append(_device_path(t, st, dp[4:ln]))
        dp = dp[ln:]
    return {"device_paths": paths}


def _guid(b: bytes) -> str:
    d1, d2, d3 = struct.unpack_from("<IHH", b, 0)
    r = b[8:16].hex().upper()
    return f"{d1:08X}-{d2:04X}-{d3:04X}-{r[:4]}-{r[4:]}"


def _device_path(t: int, st: int, v: bytes) -> str:
    s = _device_path_known(t, st, v)
    return s if s is not None else f"Path({t},{st},{v.hex()})"


def _device_path_known(t: int, st: int, v: bytes) -> str | None:
    if t == 1 and st == 1 and len(v) >= 2:
        return f"Pci({v[0]},{v[1]})"
    if t == 2 and st == 1 and len(v) >= 8:
        hid, uid = struct.unpack_from("<II", v, 0)
        vendor = hid & 0xFFFF
        letters = "".join(chr(((vendor >> s) & 0x1F) + 0x40) for s in (10, 5, 0))
        return f"ACPI({letters}{hid >> 16:04X},{uid})"
    if t == 3:
        return _messaging(st, v)
    if t == 4:
        if st == 1 and len(v) >= 38:
            num, start, size = struct.unpack_from("<IQQ", v, 0)
            fmt = v[36]
            if fmt == 1:
                sig = f"{int.from_bytes(v[20:24], 'little'):#010x}"
                prefix = "MBR"
            elif fmt == 2:
                sig = _guid(v[20:36])
                prefix = "GPT"
            else:
                return None
            extra = f",{start:#x},{size:#x}" if num else ""
            return f"HD({num},{prefix},{sig}{extra})"
        if st == 3 and len(v) >= 16:
            return f"VenMedia({_guid(v[:16])},{v[16:].hex()})"
        if st == 4 and v and len(v) % 2 == 0:
            return f"File({v[:-2].decode('utf-16-le', errors='replace')})"
        return None
    if t == 5 and st == 1 and len(v) >= 4:
        dev, status = struct.unpack_from("<HH", v, 0)
        kinds = {1: "FLOPPY", 2: "HARD_DRIVE", 3: "CDROM", 4: "PCMCIA", 5: "USB", 6: "EMBEDDED_NETWORK"}
        kinds |= {0x80: "DEV", 0xFF: "UNKNOWN"}
        rest = v[4:]
        cut = rest.find(b"\x00")
        try:
            desc = (rest if cut < 0 else rest[:cut]).decode("utf-8")
        except UnicodeDecodeError:
            return None
        return f"BBS({kinds.get(dev, str(dev))},{desc},{status})"
    return None


def _messaging(st: int, v: bytes) -> str | None:
    if st == 0x15 and len(v) >= 16:
        return f"FibreEx(0x{v[0:8].hex()},0x{v[8:16].hex()})"
    if st == 0x05 and len(v) >= 2:
        return f"USB({v[0]},{v[1]})"
    if st == 0x0B and len(v) == 33:
        mac = v[0:31].hex().rstrip("0").upper()
        return f"Mac({mac},{v[32]:#04x})"
    if st == 0x0C and len(v) >= 23:
        local, remote = v[0:4], v[4:8]
        (proto,) = struct.unpack_from("<H", v, 12)
        origin = v[14]
        gw, mask = struct.unpack_from("<II", v, 15)

        def ip(b: bytes) -> str:
            return ".".join(str(x) for x in reversed(b))

        p = {6: "TCP", 17: "UDP"}.get(proto, "")
        o = {0: "DHCP", 1: "Static"}.get(origin, "")
        gs = f",{gw},{mask}" if gw or mask else ""
        return f"IPv4({ip(remote)},{p},{o},{ip(local)}{gs})"
    return None
