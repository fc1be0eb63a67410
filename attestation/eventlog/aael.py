"""The Attestation Agent event log (AAEL) writer for ExtendRuntimeMeasurement,
and the ``cc_eventlog`` blob (CCEL + AAEL) that goes into TDX evidence.

Byte-compatible with confidential-containers/guest-components
``attestation-agent/attestation-agent/src/eventlog/`` @ 8246e5e0977f6322f0a1b0f77e0739cf1c3e1f74
(record layout: TCG PC Client Platform Firmware Profile, "TCG_PCR_EVENT2"):

* event text ``"<domain> <operation> <content>"``;
* each event is a TCG2 crypto-agile record: u32 CC MR index, u32 EV_EVENT_TAG
  (6), u32 digest count 1, u16 TCG alg id + digest, u32 event size, event =
  u32 ``0x4141454C`` ("AAEL") + u32 text length + text; the digest is the
  register bank's hash over the tagged event bytes;
* write-ahead log ``[u64 BE log offset][expected register value][event text]``,
  fsync'd before the register is extended, removed after the record is
  written; on start an existing WAL is replayed: if the register already holds
  the expected value only the record is (re)written, if one extend is missing
  it is done first, otherwise the AA refuses to start.

Where we differ from upstream, on purpose: upstream writes every record with the
MR index of the *configured* PCR even when the caller asks for another
register (the record then does not replay); we record the MR that was
actually extended. Because the WAL format has no register field, recovery
looks first for a register that already holds the WAL's expected value, then
for one that a single extend brings there (configured register first). If a
crash hit before the extend of a non-default register whose value equals the
default register's, the default one is chosen, which is what upstream always
does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
from pathlib import Path
from typing import BinaryIO

from attestation.eventlog.errors import EventLogError
from attestation.eventlog.registers import HASH_ALGORITHMS, MeasurementRegister

__all__ = [
    "AAEL_TAGGED_EVENT_ID",
    "CCEL_DATA_PATH",
    "DEFAULT_PCR",
    "EL_END_FLAG",
    "EL_HEADER",
    "EVENTLOG_PATH",
    "WAL_PATH",
    "EventLog",
    "build_cc_eventlog",
    "encode_aael_record",
    "trim_ccel",
]

EVENTLOG_PATH = "/run/attestation-agent/eventlog"
WAL_PATH = "/run/attestation-agent/.wal_event_entry"
CCEL_DATA_PATH = "/sys/firmware/acpi/tables/data/CCEL"
DEFAULT_PCR = 17
AAEL_TAGGED_EVENT_ID = 0x4141454C
EV_EVENT_TAG = 0x6
MAX_LOG_SIZE = 16 * 1024 * 1024

#: Spec ID header used when there is no CCEL (declares sha384 and sm3), from guest-components
EL_HEADER = bytes.fromhex(
    "0000000003000000" + "00" * 20 + "25000000" + "00" * 24 + "02000000" + "0c003000" + "12002000" + "00"
)
EL_END_FLAG = b"\xff" * 8


def _event_text(domain: str, operation: str, content: str) -> str:
    for name, v in (("domain", domain), ("operation", operation)):
        if not v or any(c in v for c in " \n\r"):
            raise ValueError(f"AAEL {name} must be non-empty without spaces or newlines")
    if "\n" in content:
        raise ValueError("AAEL content must not contain a newline")
    return f"{domain} {operation} {content}"


def encode_aael_record(text: str, *, ccmr: int, hash_algorithm: str) -> tuple[bytes, bytes]:
    """The TCG2 record for AAEL ``text`` and its digest."""
    try:
        alg_id, _ = HASH_ALGORITHMS[hash_algorithm]
    except KeyError as exc:
        raise ValueError(f"unsupported hash algorithm {hash_algorithm}") from exc
    body = text.encode()
    tagged = struct.pack("<II", AAEL_TAGGED_EVENT_ID, len(body)) + body
    digest = hashlib.new(hash_algorithm, tagged).digest()
    record = (
        struct.pack("<IIIH", ccmr, EV_EVENT_TAG, 1, alg_id) + digest + struct.pack("<I", len(tagged)) + tagged
    )
    return record, digest


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """AAEL writer over a :class:`MeasurementRegister` bank.

    Opening takes an exclusive lock on the log (a second AA fails fast) and
    replays a pending WAL. :meth:`extend` is thread-safe."""

    def __init__(
        self,
        registers: MeasurementRegister,
        *,
        path: str | Path = EVENTLOG_PATH,
        wal_path: str | Path = WAL_PATH,
        init_pcr: int = DEFAULT_PCR,
    ) -> None:
        self.registers = registers
        self.path = Path(path)
        self.wal_path = Path(wal_path)
        self.init_pcr = init_pcr
        self.hash_algorithm = registers.hash_algorithm
        if self.hash_algorithm not in HASH_ALGORITHMS:
            raise EventLogError(f"unsupported register hash {self.hash_algorithm}")
        self._digest_len = HASH_ALGORITHMS[self.hash_algorithm][1]
        self._lock = threading.Lock()
        self._broken = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.path, "r+b" if self.path.exists() else "w+b")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.close()
            raise EventLogError(f"event log {self.path} is in use by another process") from exc
        self._pos = self._file.seek(0, os.SEEK_END)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _h(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_algorithm, data).digest()

    def _write_at(self, offset: int, data: bytes) -> None:
        self._file.seek(offset)
        self._file.write(data)
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._pos = offset + len(data)

    def _write_wal(self, offset: int, expected: bytes, text: str) -> None:
        tmp = self.wal_path.with_name(self.wal_path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack(">Q", offset) + expected + text.encode())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.wal_path)
        _fsync_dir(self.wal_path)

    def _read_wal(self) -> tuple[int, bytes, str] | None:
        try:
            with open(self.wal_path, "rb") as f:
                raw = f.read(MAX_LOG_SIZE)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EventLogError(f"cannot read the WAL {self.wal_path}; delete it and restart the AA") from exc
        if len(raw) < 8 + self._digest_len:
            raise EventLogError(f"the WAL {self.wal_path} is truncated; delete it and restart the AA")
        (offset,) = struct.unpack(">Q", raw[:8])
        expected = raw[8 : 8 + self._digest_len]
        try:
            text = raw[8 + self._digest_len :].decode()
        except UnicodeDecodeError as exc:
            raise EventLogError(f"the WAL {self.wal_path} is corrupt; delete it and restart the AA") from exc
        return offset, expected, text

    def _candidate_pcrs(self) -> list[int]:
        seen: dict[int, int] = {}
        for pcr in (self.init_pcr, 1, 2, 8, 17):
            seen.setdefault(self.registers.pcr_to_ccmr(pcr), pcr)
        return list(seen.values())

    def _recover(self) -> None:
        wal = self._read_wal()
        if wal is None:
            return
        offset, expected, text = wal
        if offset > self._pos:
            raise EventLogError("WAL offset lies beyond the end of the event log; the log is corrupt")
        # Two passes: a register already at the expected value wins (the extend
        # happened); otherwise the first register, configured one first, that one
        # extend brings there. Upstream only ever looks at the configured register.
        # (The digest covers only the tagged event, not the MR index.)
        _, digest = encode_aael_record(text, ccmr=0, hash_algorithm=self.hash_algorithm)
        chosen: tuple[int, bytes, bool] | None = None
        for needs_extend in (False, True):
            for pcr in self._candidate_pcrs():
                record, _ = encode_aael_record(
                    text, ccmr=self.registers.pcr_to_ccmr(pcr), hash_algorithm=self.hash_algorithm
                )
                current = self.registers.read(pcr)
                value = self._h(current + digest) if needs_extend else current
                if value == expected:
                    chosen = (pcr, record, needs_extend)
                    break
            if chosen is not None:
                break
        if chosen is None:
            raise EventLogError(
                f"cannot recover the AAEL: no register holds the WAL's expected value; the log {self.path} "
                "is corrupt or another process extended the register"
            )
        pcr, record, needs_extend = chosen
        if needs_extend:
            self.registers.extend(pcr, digest)
        self._write_at(offset, record)
        self._file.truncate(self._pos)
        self.wal_path.unlink()
        _fsync_dir(self.wal_path)

    def extend(self, domain: str, operation: str, content: str, register_index: int | None = None) -> bytes:
        """Record ``"<domain> <operation> <content>"`` and extend the register
        ``register_index`` (a PCR index; default the configured one, 17 ->
        RTMR3). Returns the event digest."""
        text = _event_text(domain, operation, content)
        pcr = self.init_pcr if register_index is None else register_index
        ccmr = self.registers.pcr_to_ccmr(pcr)
        record, digest = encode_aael_record(text, ccmr=ccmr, hash_algorithm=self.hash_algorithm)
        with self._lock:
            if self._broken:
                raise EventLogError("the event log is inconsistent after a failed extend; restart the AA")
            if self._pos + len(record) > MAX_LOG_SIZE:
                raise EventLogError(f"event log would exceed {MAX_LOG_SIZE} bytes")
            current = self.registers.read(pcr)
            expected = self._h(current + digest.ljust(len(current), b"\x00"))
            offset = self._pos
            self._write_wal(offset, expected, text)
            try:
                self.registers.extend(pcr, digest)
            except BaseException:
                self._after_failed_extend(pcr, current, expected, offset, record)
                raise
            self._write_at(offset, record)
            self.wal_path.unlink()
        return digest

    def _after_failed_extend(
        self, pcr: int, before: bytes, expected: bytes, offset: int, record: bytes
    ) -> None:
        """The register bank raised (e.g. UnsupportedPlatform, an I/O error): look
        at the register to learn whether the extend happened, and leave the log
        and WAL consistent with it, as start-up recovery would."""
        try:
            now = self.registers.read(pcr)
        except Exception:
            now = None
        if now == before:  # nothing happened: drop the intent
            self.wal_path.unlink(missing_ok=True)
        elif now == expected:  # it happened: complete the record
            self._write_at(offset, record)
            self.wal_path.unlink(missing_ok=True)
        else:  # unknown: keep the WAL for start-up recovery, refuse further extends
            self._broken = True


def trim_ccel(ccel: bytes) -> bytes:
    """The CCEL log area up to (not including) its end marker, as upstream does."""
    i = 4
    if len(ccel) < i + 4:
        raise EventLogError("CCEL too short")
    (etype,) = struct.unpack_from("<I", ccel, i)
    i += 4 + 20
    if etype == 0x3:
        if len(ccel) < i + 4:
            raise EventLogError("CCEL too short")
        (size,) = struct.unpack_from("<I", ccel, i)
        i += 4 + size
    sizes = {0xB: 32, 0xC: 48, 0xD: 64, 0x12: 32}
    while True:
        if len(ccel) < i + 8:
            raise EventLogError("CCEL has no end marker")
        if ccel[i : i + 8] in (b"\xff" * 8, b"\x00" * 8):
            return ccel[:i]
        i += 8
        if len(ccel) < i + 4:
            raise EventLogError("CCEL truncated (digest count)")
        (n,) = struct.unpack_from("<I", ccel, i)
        i += 4
        for _ in range(n):
            if len(ccel) < i + 2:
                raise EventLogError("CCEL truncated (digest algorithm)")
            (alg,) = struct.unpack_from("<H", ccel, i)
            if alg not in sizes:
                raise EventLogError(f"CCEL uses unsupported digest algorithm {alg:#x}")
            i += 2 + sizes[alg]
        if len(ccel) < i + 4:
            raise EventLogError("CCEL truncated (event size)")
        (size,) = struct.unpack_from("<I", ccel, i)
        i += 4 + size


def build_cc_eventlog(
    *, ccel_path: str | Path = CCEL_DATA_PATH, aael_path: str | Path | None = None
) -> bytes | None:
    """``cc_eventlog`` for evidence: trimmed CCEL + AAEL + 8x0xFF, the fixed
    Spec ID header standing in for a missing CCEL; None if neither exists.
    ``aael_path`` defaults to ``$AAEL_PATH`` or :data:`EVENTLOG_PATH`."""
    aael = Path(aael_path if aael_path is not None else os.environ.get("AAEL_PATH", EVENTLOG_PATH))
    log = b""
    ccel = Path(ccel_path)
    if ccel.exists():
        with open(ccel, "rb") as f:
            log = trim_ccel(f.read(MAX_LOG_SIZE))
    if aael.exists():
        with open(aael, "rb") as f:
            body = f.read(MAX_LOG_SIZE)
        log = (log or EL_HEADER) + body
    if not log:
        return None
    return log + EL_END_FLAG
