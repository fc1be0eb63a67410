"""Paths and constants for the NVIDIA tests: the recorded vectors in
``tests/fixtures/evidence/nvidia`` (see its MANIFEST.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.support.vectors import evidence, vector

NV = evidence("nvidia")

NONCE_931 = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
NONCE_27A = bytes.fromhex("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66")
NONCE_COCO = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec")
NOW = datetime(2026, 1, 1, tzinfo=UTC)

#: (report, chain, nonce, arch, driver, vbios)
POSITIVE = [
    (
        "nvtrust/hopperAttestationReport.txt",
        "nvtrust/hopperCertChain.txt",
        NONCE_931,
        "HOPPER",
        "550.90.07",
        "96.00.9f.00.01",
    ),
    (
        "attestation-sdk/gpu_blackwellAttestationReport.txt",
        "attestation-sdk/gpu_blackwellCertChain.txt",
        NONCE_931,
        "BLACKWELL",
        "575.32",
        "97.00.88.00.0f",
    ),
    (
        "attestation-sdk/gpu_hopperAttestationReport.txt",
        "attestation-sdk/gpu_hopperCertChain.txt",
        NONCE_27A,
        "HOPPER",
        "535.86.09",
        "96.00.5e.00.01",
    ),
    (
        "attestation-sdk/gpu_hopperAttestationReportExpired.txt",
        "attestation-sdk/gpu_hopperCertChainExpired.txt",
        NONCE_931,
        "HOPPER",
        "570.124.03",
        "96.00.5e.00.04",
    ),
    (
        "trustee/hopper_coco_report1.txt",
        "trustee/hopper_coco_certs1.txt",
        NONCE_COCO,
        "HOPPER",
        "580.95.05",
        "96.00.74.00.1a",
    ),
]


def fixture_path(rel: str) -> Path:
    """A recorded NVIDIA vector; a missing one raises (the test fails, it never skips)."""
    return vector("nvidia", rel)


def report_bytes(rel: str) -> bytes:
    return bytes.fromhex(fixture_path(rel).read_text().strip())


def read(rel: str) -> bytes:
    return fixture_path(rel).read_bytes()
