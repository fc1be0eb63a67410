"""The KBS-side verifiers of the development TEEs ``sample`` and
``sampledevice`` (:class:`attestation.verifier.EvidenceVerifier`).

Their evidence has no signature: only the report-data binding is checked, so
the KBS registers them only when asked to (``dev_verifiers``). ``sample``
returns trustee's fixed sample claims.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from attestation.sample.errors import SampleVerificationError
from attestation.sample.evidence import SampleEvidence
from coco_common.b64 import b64_encode

__all__ = ["SampleDeviceVerifier", "SampleVerifier"]


def _check(untrusted_evidence: Any, expected_report_data: bytes, tee: str) -> SampleEvidence:
    evidence = SampleEvidence.from_json(untrusted_evidence, tee)
    if evidence.report_data(tee) != expected_report_data:
        raise SampleVerificationError(f"{tee} report_data does not match the expected runtime data digest")
    return evidence


class SampleVerifier:
    """trustee's ``sample`` verifier: byte-equal report data, fixed claims. No signature exists."""

    tee = "sample"

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        evidence = _check(untrusted_evidence, expected_report_data, self.tee)
        claims: dict[str, Any] = {
            "svn": evidence.svn,
            "report_data": evidence.report_data_b64,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        }
        if expected_init_data_hash is not None:
            claims["init_data"] = b64_encode(expected_init_data_hash)
        return claims


class SampleDeviceVerifier:
    """The ``sampledevice`` additional-device verifier: byte-equal report data, the evidence as claims."""

    tee = "sampledevice"

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        evidence = _check(untrusted_evidence, expected_report_data, self.tee)
        return {"svn": evidence.svn, "report_data": evidence.report_data_b64}
