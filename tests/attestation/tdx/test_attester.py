"""TdxAttester against a fake configfs-tsm tree and a fake /dev/tdx_guest ioctl
that serve the real fixture bytes (TEE hardware cannot exist here)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from attestation.attester import Attester
from attestation.errors import AttestationError, UnsupportedPlatform, VerificationError
from attestation.eventlog import EventLog, SoftwareRegisters, parse_event_log
from attestation.tdx.attester import TdxAttester, detect
from attestation.tdx.device import TDX_CMD_GET_REPORT0, TdxGuestDevice, TsmReport
from attestation.tdx.kbs import TdxVerifier
from attestation.tdx.quote import Quote
from attestation.tdx.tdreport import TdReport

from ._data import CCEL, FIXED_NOW, Q4, TDREPORT


class FakeTsm(TsmReport):
    """configfs-tsm as the kernel presents it: a new entry has ``provider`` and
    ``generation``; writing ``inblob`` produces ``outblob`` (here: a real quote,
    served only when the inblob equals that quote's REPORTDATA)."""

    def __init__(self, root: Path, quote: bytes, provider: str = "tdx_guest\n", race: bool = False) -> None:
        super().__init__(root)
        self.quote, self.provider, self.race = quote, provider, race
        self.inblobs: list[bytes] = []

    def _mkdtemp(self) -> Path:
        d = super()._mkdtemp()
        (d / "provider").write_text(self.provider)
        (d / "generation").write_text("0\n")
        return d

    def _rmdir(self, d: Path) -> None:
        for f in d.iterdir():
            f.unlink()
        super()._rmdir(d)

    def _write(self, p: Path, data: bytes) -> None:
        super()._write(p, data)
        if p.name == "inblob":
            self.inblobs.append(data)
            ok = data == Quote.from_bytes(self.quote).report_data
            (p.parent / "outblob").write_bytes(self.quote if ok else b"")
            (p.parent / "generation").write_text("2\n" if self.race else "1\n")


def fake_ioctl(report: bytes):  # type: ignore[no-untyped-def]
    def ioctl(fd: int, request: int, buf: bytearray, mutate: bool) -> int:
        assert request == TDX_CMD_GET_REPORT0 and mutate and len(buf) == 64 + 1024
        buf[64:] = report
        return 0

    return ioctl


@pytest.fixture
def dev(tmp_path: Path) -> TdxGuestDevice:
    node = tmp_path / "tdx_guest"
    node.write_bytes(b"")
    return TdxGuestDevice(str(node), ioctl=fake_ioctl(TDREPORT.read_bytes()))


def _attester(tmp_path: Path, dev: TdxGuestDevice, **kw: object) -> TdxAttester:
    (tmp_path / "tsm").mkdir(exist_ok=True)
    tsm = FakeTsm(tmp_path / "tsm", Q4.read_bytes(), **kw)  # type: ignore[arg-type]
    return TdxAttester(
        tsm=tsm,
        device=dev,
        measurements_dir=tmp_path / "measurements",
        ccel_path=tmp_path / "CCEL",
        aael_path=tmp_path / "aael",
    )


async def test_evidence_round_trip_through_the_verifier(tmp_path: Path, dev: TdxGuestDevice) -> None:
    a = _attester(tmp_path, dev)
    assert isinstance(a, Attester)
    rd = Quote.from_bytes(Q4.read_bytes()).report_data
    ev = await a.get_evidence(rd)
    assert set(ev) == {"cc_eventlog", "quote"} and ev["cc_eventlog"] is None
    assert base64.b64decode(ev["quote"]) == Q4.read_bytes()
    assert os.listdir(tmp_path / "tsm") == []  # the configfs entry was removed
    claims = TdxVerifier().verify(ev, expected_report_data=rd, expected_init_data_hash=None, now=FIXED_NOW)
    assert claims["mr_td"].startswith("705ee938")


async def test_short_report_data_is_zero_padded(tmp_path: Path, dev: TdxGuestDevice) -> None:
    a = _attester(tmp_path, dev)
    with pytest.raises(AttestationError, match="empty quote"):
        await a.get_evidence(b"\x01" * 48)
    assert a._tsm.inblobs[-1] == b"\x01" * 48 + bytes(16)  # type: ignore[attr-defined]
    with pytest.raises(AttestationError):
        await a.get_evidence(bytes(65))


async def test_generation_race_and_wrong_provider(tmp_path: Path, dev: TdxGuestDevice) -> None:
    rd = Quote.from_bytes(Q4.read_bytes()).report_data
    with pytest.raises(AttestationError, match="generation"):
        await _attester(tmp_path, dev, race=True).get_evidence(rd)
    with pytest.raises(UnsupportedPlatform, match="provider"):
        await _attester(tmp_path, dev, provider="sev_guest\n").get_evidence(rd)
    assert not detect(tsm=TsmReport(tmp_path / "nope"), device=TdxGuestDevice(str(tmp_path / "nope")))
    assert detect(tsm=TsmReport(tmp_path / "nope"), device=dev)


async def test_evidence_carries_ccel_and_aael(tmp_path: Path, dev: TdxGuestDevice) -> None:
    a = _attester(tmp_path, dev)
    (tmp_path / "CCEL").write_bytes(CCEL.read_bytes())
    with EventLog(
        SoftwareRegisters(tmp_path / "regs"), path=tmp_path / "aael", wal_path=tmp_path / "wal"
    ) as log:
        log.extend("github.com/confidential-containers", "PullImage", '{"image":"x", "digest":"sha256:00"}')
    ev = await a.get_evidence(Quote.from_bytes(Q4.read_bytes()).report_data)
    raw = base64.b64decode(ev["cc_eventlog"])
    assert raw.endswith(b"\xff" * 8)
    parsed = parse_event_log(raw)
    assert len(parsed.entries) == 6  # 5 CCEL events + the AAEL one
    last = parsed.entries[-1]
    assert last.index == 4 and last.details["unicode_name"] == "AAEL"
    assert last.details["data"]["content"] == {"image": "x", "digest": "sha256:00"}


async def test_bind_init_data_via_sysfs_and_ioctl(tmp_path: Path, dev: TdxGuestDevice) -> None:
    a = _attester(tmp_path, dev)
    report = TdReport.from_bytes(TDREPORT.read_bytes())
    await a.bind_init_data(report.mr_config_id)  # /dev/tdx_guest path
    with pytest.raises(VerificationError):
        await a.bind_init_data(b"\x01" * 32)
    (tmp_path / "measurements").mkdir()
    digest = bytes(range(32))
    (tmp_path / "measurements" / "mrconfigid").write_bytes(digest + bytes(16))
    await a.bind_init_data(digest)  # sysfs path, 32-byte digest padded to 48
    with pytest.raises(VerificationError):
        await a.bind_init_data(report.mr_config_id)


async def test_no_device_is_unsupported(tmp_path: Path) -> None:
    a = TdxAttester(
        tsm=TsmReport(tmp_path / "none"),
        device=TdxGuestDevice(str(tmp_path / "none")),
        measurements_dir=tmp_path / "none",
    )
    with pytest.raises(UnsupportedPlatform):
        await a.bind_init_data(bytes(48))
    with pytest.raises(UnsupportedPlatform):
        await a.get_evidence(bytes(64))


def test_rtmr_registers_sysfs_and_ioctl_fallback(tmp_path: Path, dev: TdxGuestDevice) -> None:
    a = _attester(tmp_path, dev)
    regs = a.registers()
    report = TdReport.from_bytes(TDREPORT.read_bytes())
    assert regs.read(17) == report.rtmrs[3] and regs.read(1) == report.rtmrs[0]  # ioctl fallback
    with pytest.raises(UnsupportedPlatform):
        regs.extend(17, bytes(48))
    m = tmp_path / "measurements"
    m.mkdir()
    (m / "rtmr3:sha384").write_bytes(bytes(48))
    regs.extend(17, b"\xaa" * 32)  # the kernel would extend; a plain file records what was written
    assert (m / "rtmr3:sha384").read_bytes() == b"\xaa" * 32 + bytes(16)
