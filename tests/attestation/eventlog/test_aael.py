"""AAEL writer: upstream's known-answer digests, record layout, PCR->RTMR mapping,
write-ahead-log crash recovery (every crash point), and the register backends."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from attestation.eventlog import (
    EventLog,
    EventLogError,
    MeasurementRegister,
    SoftwareRegisters,
    build_cc_eventlog,
    encode_aael_record,
    parse_event_log,
    tdx_pcr_to_ccmr,
)
from attestation.eventlog.aael import EL_HEADER

# guest-components attestation-agent/src/eventlog/mod.rs test_event_digest
KNOWN = {
    "sha256": "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351",
    "sha384": "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02",
    "sha512": "b708d222ca8bd44dfe6ba0c4ca2cbb72379276fba8091025217064be45a813e5d6124ccf073219edb617d1faf007d55061465bdf34b7437dbdc9a7405bd4e9c0",
}


@pytest.mark.parametrize("alg", sorted(KNOWN))
def test_upstream_known_answer_digests(alg: str) -> None:
    rec, digest = encode_aael_record("domain operation content", ccmr=4, hash_algorithm=alg)
    assert digest.hex() == KNOWN[alg]
    n = len(digest)
    mr, etype, count, alg_id = struct.unpack_from("<IIIH", rec)
    assert (mr, etype, count) == (4, 6, 1) and rec[14 : 14 + n] == digest
    assert alg_id == {"sha256": 0x0B, "sha384": 0x0C, "sha512": 0x0D}[alg]
    (size,) = struct.unpack_from("<I", rec, 14 + n)
    tagged = rec[18 + n :]
    assert size == len(tagged) and tagged[:4] == b"LEAA" and tagged[8:] == b"domain operation content"


def test_pcr_to_rtmr_mapping() -> None:
    assert [tdx_pcr_to_ccmr(p) for p in (0, 1, 2, 6, 7, 8, 15, 16, 17, 23)] == [4, 1, 2, 2, 1, 3, 3, 4, 4, 4]


class Crash(Exception):
    pass


class FlakyRegisters(SoftwareRegisters):
    """Software registers whose extend can be made to 'crash' before or after the write."""

    def __init__(self, d: Path) -> None:
        super().__init__(d)
        self.crash_before_extend = False
        self.crash_after_extend = False

    def extend(self, pcr: int, digest: bytes) -> None:
        if self.crash_before_extend:
            raise Crash
        super().extend(pcr, digest)
        if self.crash_after_extend:
            raise Crash


def _open(tmp: Path, regs: MeasurementRegister) -> EventLog:
    return EventLog(regs, path=tmp / "eventlog", wal_path=tmp / ".wal_event_entry")


def _check_replays(tmp: Path, regs: MeasurementRegister) -> None:
    blob = build_cc_eventlog(ccel_path=tmp / "no-ccel", aael_path=tmp / "eventlog")
    assert blob is not None
    parsed = parse_event_log(blob)
    for pcr in (1, 2, 8, 17):
        assert parsed.replay(tdx_pcr_to_ccmr(pcr)) == regs.read(pcr)


def test_extend_writes_records_that_replay(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "regs")
    assert isinstance(regs, MeasurementRegister)
    with _open(tmp_path, regs) as log:
        log.extend("github.com/confidential-containers", "PullImage", '{"image":"a", "digest":"sha256:1"}')
        log.extend("domain", "operation", "content", register_index=8)
        log.extend("domain", "operation", "content2", register_index=1)
    assert not (tmp_path / ".wal_event_entry").exists()
    _check_replays(tmp_path, regs)
    entries = parse_event_log(EL_HEADER + (tmp_path / "eventlog").read_bytes() + b"\xff" * 8).entries
    assert [e.index for e in entries] == [4, 3, 1]
    # reopening appends instead of truncating
    with _open(tmp_path, regs) as log:
        log.extend("d", "o", "c")
    _check_replays(tmp_path, regs)


def test_bad_event_text(tmp_path: Path) -> None:
    with _open(tmp_path, SoftwareRegisters(tmp_path / "r")) as log:
        for args in (("", "o", "c"), ("d d", "o", "c"), ("d", "o\n", "c"), ("d", "o", "a\nb")):
            with pytest.raises(ValueError):
                log.extend(*args)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "r")
    with _open(tmp_path, regs), pytest.raises(EventLogError, match="in use"):
        _open(tmp_path, regs)


_CHILD = """
import os, sys
from attestation.eventlog import EventLog, SoftwareRegisters

class Dying(SoftwareRegisters):
    def extend(self, pcr, digest):
        if sys.argv[2] == "before":
            os._exit(9)
        super().extend(pcr, digest)
        os._exit(9)

d = sys.argv[1]
log = EventLog(Dying(d + "/r"), path=d + "/eventlog", wal_path=d + "/.wal_event_entry")
log.extend("d", "o", sys.argv[3], register_index=int(sys.argv[4]))
"""


def _die_during_extend(tmp: Path, when: str, content: str, pcr: int = 17) -> None:
    """A real crash: a child process is killed inside the register extend."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    cp = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp), when, content, str(pcr)],
        cwd=root,
        capture_output=True,
        timeout=60,
    )
    assert cp.returncode == 9, cp.stderr.decode()
    assert (tmp / ".wal_event_entry").exists()


def test_crash_before_extend_then_recover(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "r")
    with _open(tmp_path, regs) as log:
        log.extend("d", "o", "first")
    _die_during_extend(tmp_path, "before", "second")
    with _open(tmp_path, regs):  # recovery performs the missing extend and writes the record
        pass
    assert not (tmp_path / ".wal_event_entry").exists()
    _check_replays(tmp_path, regs)
    assert len(parse_event_log(EL_HEADER + (tmp_path / "eventlog").read_bytes() + b"\xff" * 8).entries) == 2


def test_crash_after_extend_before_record(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "r")
    _die_during_extend(tmp_path, "after", "c", pcr=8)
    before = regs.read(8)
    assert before != bytes(48)
    with _open(tmp_path, regs):
        pass
    assert regs.read(8) == before  # no double extend
    _check_replays(tmp_path, regs)


def test_crash_mid_record_write(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "r")
    with _open(tmp_path, regs) as log:
        log.extend("d", "o", "one")
    good = (tmp_path / "eventlog").read_bytes()
    with _open(tmp_path, regs) as log:
        log.extend("d", "o", "two")
    full = (tmp_path / "eventlog").read_bytes()
    # simulate: WAL written, register extended, record half-written, crash
    record_len = len(full) - len(good)
    (tmp_path / "eventlog").write_bytes(full[: len(good) + record_len // 2])
    text = b"d o two"
    (tmp_path / ".wal_event_entry").write_bytes(struct.pack(">Q", len(good)) + regs.read(17) + text)
    with _open(tmp_path, regs):
        pass
    assert (tmp_path / "eventlog").read_bytes() == full


def test_wal_that_matches_no_register_refuses_start(tmp_path: Path) -> None:
    regs = SoftwareRegisters(tmp_path / "r")
    with _open(tmp_path, regs) as log:
        log.extend("d", "o", "c")
    (tmp_path / ".wal_event_entry").write_bytes(struct.pack(">Q", 0) + b"\xab" * 48 + b"d o c")
    with pytest.raises(EventLogError, match="cannot recover"):
        _open(tmp_path, regs)
    (tmp_path / ".wal_event_entry").write_bytes(b"\x00" * 10)
    with pytest.raises(EventLogError, match="truncated"):
        _open(tmp_path, regs)


def test_wal_layout_is_upstreams(tmp_path: Path) -> None:
    """[u64 BE offset][expected][text], as in upstream's test_wal_cache_offset_is_big_endian."""
    (tmp_path / "eventlog").write_bytes(bytes(512))
    _die_during_extend(tmp_path, "before", "content")
    wal = (tmp_path / ".wal_event_entry").read_bytes()
    _, digest = encode_aael_record("d o content", ccmr=4, hash_algorithm="sha384")
    assert wal[:8] == bytes([0, 0, 0, 0, 0, 0, 2, 0])
    assert wal[8:56] == hashlib.sha384(bytes(48) + digest).digest()
    assert wal[56:] == b"d o content"


def test_cc_eventlog_without_anything_is_none(tmp_path: Path) -> None:
    assert build_cc_eventlog(ccel_path=tmp_path / "a", aael_path=tmp_path / "b") is None


def test_unsupported_extend_leaves_no_wal(tmp_path: Path) -> None:
    """On a TD without the measurements sysfs, extending fails cleanly and the AA
    can still start next time (no dangling WAL)."""
    from attestation.errors import UnsupportedPlatform
    from attestation.tdx.registers import TdxRtmrRegisters

    class NoSysfs(TdxRtmrRegisters):
        def read(self, pcr: int) -> bytes:
            return bytes(48)  # what the TDREPORT fallback would return

    regs = NoSysfs(tmp_path / "absent")
    with _open(tmp_path, regs) as log, pytest.raises(UnsupportedPlatform):
        log.extend("d", "o", "c")
    assert not (tmp_path / ".wal_event_entry").exists()
    assert (tmp_path / "eventlog").read_bytes() == b""
    with _open(tmp_path, regs):
        pass


def test_extend_that_raises_after_extending_is_completed(tmp_path: Path) -> None:
    regs = FlakyRegisters(tmp_path / "r")
    with _open(tmp_path, regs) as log:
        regs.crash_after_extend = True
        with pytest.raises(Crash):
            log.extend("d", "o", "c")
        regs.crash_after_extend = False
        assert not (tmp_path / ".wal_event_entry").exists()
        log.extend("d", "o", "c2")
    _check_replays(tmp_path, regs)
