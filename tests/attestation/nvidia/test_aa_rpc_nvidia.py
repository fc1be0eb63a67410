"""GetAdditionalEvidence / GetAdditionalTees over real ttRPC with the NVIDIA attester
(fake NVML serving a recorded report), and the KBS-side verifier on the result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from attestation.aa.agent import AttestationAgent
from attestation.aa.config import AaConfig
from attestation.aa.rpc import ttrpc_service
from attestation.nvidia.attester import NvidiaAttester
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.sample import SampleAttester
from coco_rpc.protos import attestation_agent_pb2 as pb
from coco_rpc.ttrpc import TtrpcServer
from tests.support.aa import AA_SERVICE, ttrpc_call

from .fakegpu import FakeNvml, recorded_device
from .vectors import NONCE_931, NOW, read, report_bytes


async def test_additional_evidence_over_ttrpc(tmp_path: Path) -> None:
    fake = FakeNvml(
        devices=[
            recorded_device(
                report_bytes("nvtrust/hopperAttestationReport.txt"),
                read("nvtrust/hopperCertChain.txt"),
                uuid="GPU-rpc",
            )
        ]
    )
    agent = AttestationAgent(AaConfig(), SampleAttester(), devices=[NvidiaAttester(fake)])
    sock = tmp_path / "aa.sock"
    srv = TtrpcServer(sock, [ttrpc_service(agent)])
    await srv.start()
    try:
        runtime_data = NONCE_931 + b"\x00" * 16
        req = pb.GetAdditionalEvidenceRequest(RuntimeData=runtime_data).SerializeToString()
        code, msg, out = await asyncio.to_thread(ttrpc_call, sock, AA_SERVICE, "GetAdditionalEvidence", req)
        assert code == 0, msg
        evidence = json.loads(pb.GetEvidenceResponse.FromString(out).Evidence)
        assert list(evidence) == ["nvidia"]
        code, _, out = await asyncio.to_thread(
            ttrpc_call,
            sock,
            AA_SERVICE,
            "GetAdditionalTees",
            pb.GetAdditionalTeesRequest().SerializeToString(),
        )
        assert list(pb.GetAdditionalTeesResponse.FromString(out).additional_tees) == ["nvidia"]
    finally:
        await srv.close()
    claims = NvidiaVerifier().verify(
        evidence["nvidia"], expected_report_data=runtime_data, expected_init_data_hash=None, now=NOW
    )
    assert claims["devices"][0]["uuid"] == "GPU-rpc" and claims["devices"][0]["nonce_checked"] is True
