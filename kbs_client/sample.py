"""The protocol's development ``sample`` TEE as an evidence source (reference §9.1):
the evidence itself is :class:`attestation.sample.evidence.SampleEvidence`."""

from __future__ import annotations

from typing import Any

from attestation.sample.evidence import SampleEvidence

__all__ = ["SAMPLE_SVN", "SampleEvidenceSource", "sample_evidence"]

SAMPLE_SVN = "1"


def sample_evidence(report_data: bytes) -> dict[str, str]:
    """``{"svn":"1","report_data":<std base64 of the raw bytes, unpadded digest>}``."""
    return SampleEvidence.of(SAMPLE_SVN, report_data).to_json()


class SampleEvidenceSource:
    """An :class:`kbs_client.rcar.EvidenceSource` producing sample evidence and no devices.

    Development only: the evidence carries no signature at all."""

    tee = "sample"

    async def primary_evidence(self, report_data: bytes) -> Any:
        return sample_evidence(report_data)

    async def additional_evidence(self, device_report_data: bytes) -> str:
        return ""
