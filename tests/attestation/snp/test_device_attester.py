"""Collection: configfs-tsm and /dev/sev-guest against fake kernels serving real
reports (mocked: the SEV guest driver, since there is no SNP hardware here),
and the SnpAttester's evidence going through SnpVerifier."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.attester import Attester
from attestation.errors import VerificationError
from attestation.snp.attester import SnpAttester
from attestation.snp.device import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    SevGuestDevice,
    TsmReportSource,
    default_sources,
)
from attestation.snp.errors import SnpDeviceUnavailable, SnpFormatError
from attestation.snp.evidence import CertTableEntry, build_cert_table, parse_cert_table
from attestation.snp.kbs import SnpVerifier
from attestation.snp.report import AttestationReport

from .fakes import FakeSevGuestIoctl, FakeTsmTree

#: recorded vectors are verified as of a fixed date inside every VCEK's validity (Milan 2023-2030,
#: Genoa 2025-2032), so the suite does not start failing the day a recorded certificate expires
TODAY = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def recorded(fx: Path) -> tuple[bytes, bytes]:
    report = (fx / "trustee/test-report.bin").read_bytes()
    table = build_cert_table([CertTableEntry.of("VCEK", (fx / "trustee/test-vcek.der").read_bytes())])
    return report, table


def _tsm(tmp_path: Path, fake: FakeTsmTree) -> TsmReportSource:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return TsmReportSource(root, fake)


# ---- certificate table -----------------------------------------------------------------


def test_cert_table_roundtrip_and_guid_order(fx: Path) -> None:
    vcek = (fx / "trustee/test-vcek.der").read_bytes()
    table = build_cert_table([CertTableEntry.of("ARK", b"ark"), CertTableEntry.of("VCEK", vcek)])
    # RFC 4122 byte order, as go-sev-guest and virtee/sev write it
    assert table[24:40] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    entries = parse_cert_table(table + bytes(4096))
    assert [(e.cert_type, e.data) for e in entries] == [("ARK", b"ark"), ("VCEK", vcek)]
    assert parse_cert_table(b"") == ()
    with pytest.raises(SnpFormatError, match="outside"):
        parse_cert_table(table[:60])
    with pytest.raises(SnpFormatError, match="truncated"):
        parse_cert_table(table[:20])


# ---- configfs-tsm ----------------------------------------------------------------------


def test_tsm_report_with_certs_and_vmpl(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    report, table = recorded
    fake = FakeTsmTree(report, table)
    src = _tsm(tmp_path, fake)
    raw = src.get_report(b"\xaa" * 48, vmpl=0, want_certs=True)
    assert raw.report == report and raw.cert_table == table
    assert fake.inblobs == [b"\xaa" * 48 + bytes(16)]  # zero-padded to 64
    assert fake.privlevels == [b"0"]
    assert not fake.live and not any(src.root.iterdir())  # the report object was removed


def test_tsm_without_vmpl_or_certs(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    fake = FakeTsmTree(recorded[0], None)
    raw = _tsm(tmp_path, fake).get_report(b"", vmpl=None, want_certs=True)
    assert raw.cert_table is None and fake.privlevels == []


def test_tsm_errors_clean_up(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    fake = FakeTsmTree(recorded[0], provider=b"tdx_guest\n")
    src = _tsm(tmp_path, fake)
    with pytest.raises(SnpDeviceUnavailable, match="tdx_guest"):
        src.get_report(b"", vmpl=None, want_certs=False)
    assert not any(src.root.iterdir())

    floor = FakeTsmTree(recorded[0], floor=2)
    with pytest.raises(SnpDeviceUnavailable, match="privlevel_floor"):
        _tsm(tmp_path / "b", floor).get_report(b"", vmpl=1, want_certs=False)
    assert not floor.live

    race = FakeTsmTree(recorded[0], race=True)
    with pytest.raises(SnpDeviceUnavailable, match="generation 2, expected 1"):
        _tsm(tmp_path / "c", race).get_report(b"", vmpl=None, want_certs=False)
    assert not race.live

    with pytest.raises(SnpFormatError, match="at most 64"):
        _tsm(tmp_path / "d", FakeTsmTree(recorded[0])).get_report(b"x" * 65, vmpl=None, want_certs=False)
    with pytest.raises(SnpDeviceUnavailable, match="cannot create"):
        TsmReportSource(tmp_path / "missing", FakeTsmTree(recorded[0])).get_report(
            b"", vmpl=None, want_certs=False
        )


# ---- /dev/sev-guest --------------------------------------------------------------------


def _dev(tmp_path: Path, fake: FakeSevGuestIoctl) -> SevGuestDevice:
    node = tmp_path / "sev-guest"
    node.write_bytes(b"")
    return SevGuestDevice(node, ioctl=fake)


def test_ioctl_get_report(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    fake = FakeSevGuestIoctl(recorded[0])
    raw = _dev(tmp_path, fake).get_report(b"\x01\x02", vmpl=2, want_certs=False)
    assert raw.report == recorded[0] and raw.cert_table is None
    assert fake.calls == [(SNP_GET_REPORT, b"\x01\x02" + bytes(62), 2)]


def test_ioctl_ext_report_grows_cert_buffer(tmp_path: Path, fx: Path, recorded: tuple[bytes, bytes]) -> None:
    vcek = (fx / "trustee/test-vcek.der").read_bytes()
    big = build_cert_table([CertTableEntry.of("VCEK", vcek)] + [CertTableEntry.of("CRL", b"\5" * 6000)] * 3)
    assert len(big) > 16384
    fake = FakeSevGuestIoctl(recorded[0], big)
    raw = _dev(tmp_path, fake).get_report(b"", vmpl=None, want_certs=True)
    assert fake.cert_buffer_sizes == [16384, 20480]
    assert [c[0] for c in fake.calls] == [SNP_GET_EXT_REPORT] * 2 and fake.calls[0][2] == 0
    assert raw.cert_table is not None
    assert [e.cert_type for e in parse_cert_table(raw.cert_table)] == ["VCEK", "CRL", "CRL", "CRL"]


def test_ioctl_no_host_certs_and_failures(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    assert (
        _dev(tmp_path, FakeSevGuestIoctl(recorded[0])).get_report(b"", vmpl=0, want_certs=True).cert_table
        is None
    )
    with pytest.raises(SnpDeviceUnavailable, match="status 0x16"):
        _dev(tmp_path, FakeSevGuestIoctl(recorded[0], fw_status=0x16)).get_report(
            b"", vmpl=0, want_certs=False
        )
    with pytest.raises(SnpDeviceUnavailable, match="cannot open"):
        SevGuestDevice(tmp_path / "nope", ioctl=FakeSevGuestIoctl(recorded[0])).get_report(
            b"", vmpl=0, want_certs=False
        )
    with pytest.raises(SnpFormatError, match="VMPL"):
        _dev(tmp_path, FakeSevGuestIoctl(recorded[0])).get_report(b"", vmpl=4, want_certs=False)


def test_real_ioctl_path_on_a_non_device(tmp_path: Path) -> None:
    """The real fcntl path, on a regular file: the kernel answers ENOTTY."""
    node = tmp_path / "not-a-device"
    node.write_bytes(b"")
    with pytest.raises(SnpDeviceUnavailable, match="sev-guest ioctl failed"):
        SevGuestDevice(node).get_report(b"", vmpl=0, want_certs=False)


def test_default_sources_detection(tmp_path: Path) -> None:
    assert default_sources(tmp_path) == []
    (tmp_path / "sys/kernel/config/tsm/report").mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev-guest").write_bytes(b"")
    assert [s.name for s in default_sources(tmp_path)] == ["configfs-tsm", "sev-guest"]


# ---- attester --------------------------------------------------------------------------


async def test_attester_evidence_verifies(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    report, table = recorded
    att = SnpAttester([_tsm(tmp_path, FakeTsmTree(report, table))], vmpl=0)
    assert isinstance(att, Attester) and att.tee == "snp"
    ev = await att.get_evidence(b"\x01" * 48)
    assert set(ev) == {"attestation_report", "cert_chain"}
    assert ev["cert_chain"][0]["cert_type"] == "VCEK" and isinstance(ev["cert_chain"][0]["data"], list)
    assert ev["attestation_report"]["version"] == 2
    recorded_rd = AttestationReport.from_bytes(report).report_data
    claims = SnpVerifier().verify(
        ev, expected_report_data=recorded_rd, expected_init_data_hash=None, now=TODAY
    )
    assert claims["reported_tcb_snp"] == 8


async def test_attester_falls_back_to_ioctl(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    report, table = recorded
    ioctl = FakeSevGuestIoctl(report, table)
    att = SnpAttester([_tsm(tmp_path, FakeTsmTree(report, provider=b"tdx_guest\n")), _dev(tmp_path, ioctl)])
    ev = await att.get_evidence(b"")
    assert ev["cert_chain"] is not None and ioctl.calls


async def test_bind_init_data(tmp_path: Path, recorded: tuple[bytes, bytes]) -> None:
    report = recorded[0]
    host_data = AttestationReport.from_bytes(report).host_data
    att = SnpAttester([_tsm(tmp_path, FakeTsmTree(report))])
    await att.bind_init_data(host_data)
    await att.bind_init_data(host_data + b"\x99" * 16)  # a SHA-384 digest is truncated to 32 bytes
    with pytest.raises(VerificationError, match="HOST_DATA"):
        await att.bind_init_data(b"\x01" * 32)


async def test_attester_without_device() -> None:
    with pytest.raises(SnpDeviceUnavailable):
        await SnpAttester([]).get_evidence(b"")
    SnpAttester()  # constructible without arguments (attestation.detect does this)
