"""The KBS-side verifiers of the development TEEs ``sample`` and
``sampledevice`` (:class:`attestation.verifier.EvidenceVerifier`).

Their evidence has no signature: only the report-data binding is checked, so
the KBS registers them only when asked to (``dev_verifiers``). ``sample``
returns trustee's fixed sample claims.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from attestation.sample.errors import SampleVerificationError
from attestation.sample.evidence import SampleEvidence
from coco_common.b64 import b64_encode

__all__ = ["SampleDeviceVerifier", "SampleVerifier"]


class _ReportDataVerifier(ABC):
    """Checks the one thing a sample evidence can be checked for, the report-data
    binding; subclasses name the TEE and say which claims it gives."""

    tee: str

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        evidence = SampleEvidence.from_json(untrusted_evidence, self.tee)
        if evidence.report_data(self.tee) != expected_report_data:
            raise SampleVerificationError(
                f"{self.tee} report_data does not match the expected runtime data digest"
            )
        return self._claims(evidence, expected_init_data_hash)

    @abstractmethod
    def _claims(self, evidence: SampleEvidence, init_data_hash: bytes | None) -> dict[str, Any]: ...


class SampleVerifier(_ReportDataVerifier):
    """trustee's ``sample`` verifier: byte-equal report data, fixed claims. No signature exists."""

    tee = "sample"

    def _claims(self, evidence: SampleEvidence, init_data_hash: bytes | None) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "svn": evidence.svn,
            "report_data": evidence.report_data_b64,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        }
        if init_data_hash is not None:
            claims["init_data"] = b64_encode(init_data_hash)
        return claims


class SampleDeviceVerifier(_ReportDataVerifier):
    """The ``sampledevice`` additional-device verifier: byte-equal report data, the evidence as claims."""

    tee = "sampledevice"

    def _claims(self, evidence: SampleEvidence, init_data_hash: bytes | None) -> dict[str, Any]:
        return {"svn": evidence.svn, "report_data": evidence.report_data_b64}
