"""An RCAR handshake with tee "snp" against our reference ``kbs`` (a real
subprocess on 127.0.0.1), the evidence coming from SnpAttester over a fake
configfs-tsm tree that serves a *recorded* Milan report with its VCEK.

Honest caveat: a recorded report's REPORT_DATA is fixed, so it cannot carry
the digest of this session's nonce and TEE key. The KBS is therefore started
with the explicit, test-only ``insecure_skip_report_data_binding`` verifier
option (:class:`attestation.replay.BindingSkip`); the
test also shows that without it the very same handshake is rejected. Chain,
signature, TCB, VMPL and init-data checks stay on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.support.kbs as support
from attestation.snp.attester import SnpAttester
from attestation.snp.device import TsmReportSource
from attestation.snp.evidence import CertTableEntry, build_cert_table
from attestation.snp.measure import reference_value_message, reference_values
from attestation.snp.report import AttestationReport
from kbs_client.errors import AttestationRejected, PolicyDenied
from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_protocol.jws import decode_unverified

from .fakes import FakeTsmTree

SKIP_BINDING = """
[attestation_service.verifier_config.snp]
insecure_skip_report_data_binding = "test: recorded SNP report cannot bind this session's nonce"
"""


class SnpSource:
    """kbs_client EvidenceSource over an SnpAttester (no additional devices)."""

    tee = "snp"

    def __init__(self, attester: SnpAttester) -> None:
        self.attester = attester
        self.report_data: list[bytes] = []

    async def primary_evidence(self, report_data: bytes) -> Any:
        self.report_data.append(report_data)
        return await self.attester.get_evidence(report_data)

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""


def _source(fx: Path, tmp_path: Path) -> tuple[SnpSource, FakeTsmTree]:
    report = (fx / "trustee/test-report.bin").read_bytes()
    table = build_cert_table([CertTableEntry.of("VCEK", (fx / "trustee/test-vcek.der").read_bytes())])
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    fake = FakeTsmTree(report, table)
    return SnpSource(SnpAttester([TsmReportSource(root, fake)], vmpl=0)), fake


@pytest.mark.slow
async def test_snp_handshake_and_resource(fx: Path, tmp_path: Path) -> None:
    source, fake = _source(fx, tmp_path)
    with support.start_kbs(
        tmp_path / "kbs",
        policy="allow_all",
        resources={"default/key/snp": b"released"},
        extra_toml=SKIP_BINDING,
    ) as kbs:
        async with httpx.AsyncClient() as http:
            att = await attest(http, kbs.url, source, attempts=1, timeout=30)
            secret = await get_resource(http, kbs.url, "kbs:///default/key/snp", token=att.token, key=att.key)
        log = kbs.log_text()
    assert secret == b"released"
    # the nonce-derived report data (SHA-384, 48 bytes) reached the device zero-padded to 64
    assert len(source.report_data[0]) == 48 and fake.inblobs == [source.report_data[0] + bytes(16)]
    _, claims = decode_unverified(att.token)
    snp = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]
    assert snp["product"] == "Milan" and snp["signing_key"] == "vcek"
    assert snp["reported_tcb_microcode"] == 115 and snp["insecure_report_data_binding_skipped"] is True
    assert snp["policy_debug_allowed"] is False and snp["tee_type"] == "snp"
    assert "INSECURE" in log


@pytest.mark.slow
async def test_reference_values_make_the_snp_guest_affirming(fx: Path, tmp_path: Path) -> None:
    """Reference values from attestation.snp.measure, loaded through the KBS
    admin API, turn the default CPU appraisal affirming; the 'affirming'
    resource policy then releases the secret. With a different measurement
    registered, the same evidence is no longer affirming and is refused."""
    source, _ = _source(fx, tmp_path)
    report = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    measurement = report.measurement
    # trustee's default CPU policy: hardware 2 needs the four reported TCB components known
    tcb = {
        "snp_bootloader": [report.reported_tcb.bootloader],
        "snp_microcode": [report.reported_tcb.microcode],
        "snp_snp_svn": [report.reported_tcb.snp],
        "snp_tee_svn": [report.reported_tcb.tee],
    }
    msg = reference_value_message({**reference_values([measurement]), **tcb})
    with support.start_kbs(
        tmp_path / "kbs", policy="affirming", resources={"default/key/snp": b"ok"}, extra_toml=SKIP_BINDING
    ) as kbs:
        r = kbs.admin("POST", "/kbs/v0/reference-value", json_body=msg)
        assert r.status_code == 200, r.text
        async with httpx.AsyncClient() as http:
            att = await attest(http, kbs.url, source, attempts=1, timeout=30)
            assert (
                await get_resource(http, kbs.url, "kbs:///default/key/snp", token=att.token, key=att.key)
                == b"ok"
            )
            _, claims = decode_unverified(att.token)
            assert claims["submods"]["cpu0"]["ear.status"] == "affirming"

            kbs.set_reference_values({"snp_launch_measurement": ["00" * 48], **tcb})
            att2 = await attest(http, kbs.url, source, attempts=1, timeout=30)
            _, claims2 = decode_unverified(att2.token)
            assert claims2["submods"]["cpu0"]["ear.status"] != "affirming"
            with pytest.raises(PolicyDenied):
                await get_resource(http, kbs.url, "kbs:///default/key/snp", token=att2.token, key=att2.key)


@pytest.mark.slow
async def test_snp_handshake_rejected_without_the_test_hook(fx: Path, tmp_path: Path) -> None:
    source, _ = _source(fx, tmp_path)
    with support.start_kbs(tmp_path / "kbs", policy="allow_all") as kbs:
        async with httpx.AsyncClient() as http:
            with pytest.raises(AttestationRejected):
                await attest(http, kbs.url, source, attempts=1, timeout=30)
