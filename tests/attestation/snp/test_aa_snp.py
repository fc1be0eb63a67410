"""The Attestation Agent with the SNP attester (fake configfs-tsm serving a
recorded Milan report; mocked because there is no SNP hardware here):
GetEvidence, initdata binding, and GetToken("kbs") against the reference KBS
(with the test-only report-data hook explained in test_kbs_handshake.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import attestation.aa.agent as agent_mod
import attestation.aa.config as config_mod
import attestation.aa.errors as errors_mod
import tests.support.kbs as support
from attestation.snp.attester import SnpAttester
from attestation.snp.device import TsmReportSource
from attestation.snp.evidence import SnpEvidence
from attestation.snp.report import AttestationReport

from .fakes import FakeTsmTree
from .test_kbs_handshake import SKIP_BINDING, _source


def _agent(att: SnpAttester, url: str = "http://127.0.0.1:1") -> object:
    cfg = config_mod.AaConfig(kbs=config_mod.KbsTokenConfig(url))
    return agent_mod.AttestationAgent(cfg, att, devices=[], kbs_retry_delay=0.01)


async def test_get_evidence_and_bind_init_data(fx: Path, tmp_path: Path) -> None:
    report = (fx / "trustee/test-report.bin").read_bytes()
    root = tmp_path / "report"
    root.mkdir()
    fake = FakeTsmTree(report)
    aa = _agent(SnpAttester([TsmReportSource(root, fake)]))
    assert aa.tee() == "snp"  # type: ignore[attr-defined]
    out = await aa.get_evidence(b"\x42" * 48)  # type: ignore[attr-defined]
    ev = SnpEvidence.from_json(out)
    assert ev.report.raw == report and ev.cert_chain is None
    assert fake.inblobs == [b"\x42" * 48 + bytes(16)]
    host_data = AttestationReport.from_bytes(report).host_data
    assert await aa.bind_init_data(host_data) is True  # type: ignore[attr-defined]
    with pytest.raises(errors_mod.InitDataBindError):
        await aa.bind_init_data(b"\x01" * 32)  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_get_token_kbs(fx: Path, tmp_path: Path) -> None:
    source, _ = _source(fx, tmp_path)
    with support.start_kbs(tmp_path / "kbs", policy="allow_all", extra_toml=SKIP_BINDING) as kbs:
        aa = _agent(source.attester, kbs.url)
        out = json.loads(await aa.get_token("kbs"))  # type: ignore[attr-defined]
    assert out["token"].count(".") == 2 and "PRIVATE KEY" in out["tee_keypair"]
