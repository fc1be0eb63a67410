"""Composite attestation against the reference KBS (a real subprocess on 127.0.0.1):
sample CPU evidence + NVIDIA GPU evidence from the fake NVML layer.

The KBS verifies GPUs with NvidiaVerifier; its config points the verifier at
the fake GPUs' test root (``[attestation_service.verifier_config.nvidia]``),
since only a real GPU can sign a fresh nonce under NVIDIA's root.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.aa.agent import CompositeEvidenceSource
from attestation.nvidia.attester import NvidiaAttester
from attestation.sample.attester import SampleAttester
from kbs_client import rcar
from kbs_client.errors import AttestationRejected
from tests.support.kbs import RunningKbs, start_kbs

from .fakegpu import FakeDevice, FakeNvml, TestGpu
from .vectors import report_bytes


@pytest.fixture(scope="module")
def gpus() -> list[TestGpu]:
    template = report_bytes("nvtrust/hopperAttestationReport.txt")
    return [TestGpu(template) for _ in range(2)]


def kbs_with_root(tmp_path: Path, root_pem: bytes) -> AbstractContextManager[RunningKbs]:
    root = tmp_path / "test-device-root.pem"
    root.write_bytes(root_pem)
    extra = f'[attestation_service.verifier_config.nvidia]\ndevice_root_path = "{root}"\n'
    return start_kbs(tmp_path / "kbs", extra_toml=extra)


async def test_kbs_reflects_each_gpu_in_submods(tmp_path: Path, gpus: list[TestGpu]) -> None:
    # two devices (two UUIDs) under one test identity and root
    gpu = gpus[0]
    fake = FakeNvml(devices=[FakeDevice(9, f"GPU-{i}", gpu.report, gpu.chain_pem) for i in range(2)])
    with kbs_with_root(tmp_path, gpu.root.public_bytes(Encoding.PEM)) as kbs:
        source = CompositeEvidenceSource(SampleAttester(), [NvidiaAttester(fake)])
        async with httpx.AsyncClient() as http:
            result = await rcar.attest(http, kbs.url, source, attempts=1)
    submods = result.claims["submods"]
    assert {"cpu0", "gpu0", "gpu1"} <= set(submods)
    for i in range(2):
        annotated = submods[f"gpu{i}"]["ear.veraison.annotated-evidence"]
        dev = annotated["nvidia"]
        assert dev["uuid"] == f"GPU-{i}" and dev["arch"] == "HOPPER" and dev["nonce_checked"] is True
        assert dev["driver_version"] == "550.90.07"
        assert dev["fwid_checked"] is True and len(dev["measurements_sha384"]) == 96
        assert "measurements" not in dev  # tokens carry the compact claim set


async def test_kbs_rejects_gpu_from_untrusted_root(tmp_path: Path, gpus: list[TestGpu]) -> None:
    trusted, rogue = gpus
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-rogue", rogue.report, rogue.chain_pem)])
    with kbs_with_root(tmp_path, trusted.root.public_bytes(Encoding.PEM)) as kbs:
        source = CompositeEvidenceSource(SampleAttester(), [NvidiaAttester(fake)])
        async with httpx.AsyncClient() as http:
            with pytest.raises(AttestationRejected):
                await rcar.attest(http, kbs.url, source, attempts=1)
