"""ExtendRuntimeMeasurement through the real process: AAEL records and the
sample platform's software registers, computed independently here from the
TCG2 layout in guest-components.md §2.8."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

from coco_rpc.protos import attestation_agent_pb2 as pb
from tests.support.aa import aa_executable, start_aa

CFG = "[eventlog_config]\nenable_eventlog = true\n"
CONTENT = '{"image":"example.com/app:1", "digest":"sha256:' + "ab" * 32 + '"}'


def _record(text: str, ccmr: int) -> tuple[bytes, bytes]:
    tagged = struct.pack("<II", 0x4141454C, len(text.encode())) + text.encode()
    digest = hashlib.sha384(tagged).digest()
    return struct.pack("<IIIH", ccmr, 6, 1, 0x0C) + digest + struct.pack("<I", len(tagged)) + tagged, digest


def _extend(aa, domain: str, op: str, content: str, index: int | None = None) -> int:  # type: ignore[no-untyped-def]
    req = pb.ExtendRuntimeMeasurementRequest(Domain=domain, Operation=op, Content=content)
    if index is not None:
        req.RegisterIndex = index
    code, msg, out = aa.call("ExtendRuntimeMeasurement", req.SerializeToString())
    assert code == 0, msg
    return pb.ExtendRuntimeMeasurementResponse.FromString(out).Result


def test_known_answer_vector() -> None:
    # upstream eventlog/mod.rs test vector (domain/operation/content), sha384 prefix/suffix
    _, digest = _record("domain operation content", 4)
    assert digest.hex().startswith("dad5f0e2") and digest.hex().endswith("0d02")


def test_extend_writes_aael_and_register(tmp_path: Path) -> None:
    log_path = tmp_path / "el" / "eventlog"
    with start_aa(tmp_path / "aa", config_toml=CFG, env={"AAEL_PATH": str(log_path)}) as aa:
        assert _extend(aa, "github.com/confidential-containers", "PullImage", CONTENT) == 0
        assert _extend(aa, "d", "o", "second", 9) == 0
    rec1, d1 = _record(f"github.com/confidential-containers PullImage {CONTENT}", 4)
    rec2, d2 = _record("d o second", 3)  # PCR 9 -> MR3
    assert log_path.read_bytes() == rec1 + rec2
    regs = log_path.parent / "sample-registers"
    assert (regs / "ccmr4").read_bytes() == hashlib.sha384(b"\0" * 48 + d1).digest()
    assert (regs / "ccmr3").read_bytes() == hashlib.sha384(b"\0" * 48 + d2).digest()
    assert not (log_path.parent / ".wal_event_entry").exists()


def test_disabled_by_default(tmp_path: Path) -> None:
    log_path = tmp_path / "el" / "eventlog"
    with start_aa(tmp_path / "aa", env={"AAEL_PATH": str(log_path)}) as aa:
        assert _extend(aa, "d", "o", "c") == 2  # NOT_ENABLED
    assert not log_path.exists()


def test_unrecoverable_wal_refuses_start(tmp_path: Path) -> None:
    log_path = tmp_path / "el" / "eventlog"
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(b"")
    (log_path.parent / ".wal_event_entry").write_bytes(struct.pack(">Q", 0) + b"\x11" * 48 + b"d o c")
    (tmp_path / "aa.toml").write_text(CFG)
    cp = subprocess.run(
        [aa_executable(), "-a", f"unix://{tmp_path}/aa.sock", "-c", str(tmp_path / "aa.toml")],
        capture_output=True,
        timeout=30,
        env={"AAEL_PATH": str(log_path), "PATH": "/usr/bin:/bin"},
    )
    assert cp.returncode == 1
    assert b"WAL" in cp.stderr
    assert not (tmp_path / "aa.sock").exists()
