"""``kbs-client attest`` uses the TEE it runs in, as upstream's
``NativeEvidenceProvider``: SNP evidence when an SEV-SNP guest interface is
present (here the fake configfs-tsm tree of ``fakes.py`` serving a recorded
Milan report; there is no SNP hardware on this machine), the sample evidence
only when no TEE is found."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from attestation.detect import HostView
from attestation.snp.device import TsmReportSource
from attestation.snp.evidence import CertTableEntry, SnpEvidence, build_cert_table
from kbs_client.cli import evidence_source, main
from kbs_client.errors import KbsClientError
from kbs_protocol.jws import decode_unverified

from .fakes import FakeTsmTree
from .test_kbs_handshake import SKIP_BINDING

support = pytest.importorskip(
    "tests.support.kbs", reason="tests/support/kbs.py (reference KBS fixture) missing"
)


def _snp_guest(root: Path) -> Path:
    (root / "sys/devices/platform/sev-guest").mkdir(parents=True)
    return root


async def test_no_tee_means_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        src = await evidence_source(HostView(root=tmp_path, env={}))
    assert src.tee == "sample" and "sample attester" in caplog.text
    ev = await src.primary_evidence(b"\x01" * 32)
    assert ev["svn"] == "1" and ev["report_data"]


async def test_snp_guest_uses_the_snp_attester(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = (fx / "trustee/test-report.bin").read_bytes()
    tsm = tmp_path / "tsm"
    tsm.mkdir()
    fake = FakeTsmTree(report)
    monkeypatch.setattr("attestation.snp.attester.default_sources", lambda: [TsmReportSource(tsm, fake)])
    src = await evidence_source(HostView(root=_snp_guest(tmp_path / "root"), env={}))
    assert src.tee == "snp"
    ev = SnpEvidence.from_json(await src.primary_evidence(b"\x42" * 48))
    assert ev.report.raw == report and fake.inblobs == [b"\x42" * 48 + bytes(16)]
    assert await src.additional_evidence(b"\x00" * 48) == ""


async def test_snp_guest_without_a_usable_interface_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("attestation.snp.attester.default_sources", lambda: [])
    src = await evidence_source(HostView(root=_snp_guest(tmp_path), env={}))
    with pytest.raises(KbsClientError, match="cannot collect snp evidence"):
        await src.primary_evidence(b"\x42" * 48)


@pytest.mark.slow
def test_cli_attest_on_an_snp_guest(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = (fx / "trustee/test-report.bin").read_bytes()
    table = build_cert_table([CertTableEntry.of("VCEK", (fx / "trustee/test-vcek.der").read_bytes())])
    tsm = tmp_path / "tsm"
    tsm.mkdir()
    fake = FakeTsmTree(report, table)
    monkeypatch.setattr("attestation.snp.attester.default_sources", lambda: [TsmReportSource(tsm, fake)])
    roots = {"snp": _snp_guest(tmp_path / "snp-root"), "sample": tmp_path / "bare-root"}
    roots["sample"].mkdir()
    with support.start_kbs(tmp_path / "kbs", policy="allow_all", extra_toml=SKIP_BINDING) as kbs:
        for tee, root in roots.items():
            monkeypatch.setattr("attestation.detect.HostView", lambda root=root: HostView(root=root, env={}))
            assert main(["--url", kbs.url, "attest"]) == 0
            token = capsys.readouterr().out.strip()
            _, claims = decode_unverified(token)
            annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
            assert tee in annotated, sorted(annotated)
    assert len(fake.inblobs) == 1  # the SNP device was asked once, by the snp run
