"""The contract every evidence verifier (KBS side) fulfils.

A verifier checks that untrusted evidence is authentic (signatures, chains,
validity at ``now``) and bound to ``expected_report_data``, and returns the
claims that go into the attestation token. Policy (minimum TCB, allowed
measurements, debug) is a separate step and is not applied here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

__all__ = ["EvidenceVerifier"]


@runtime_checkable
class EvidenceVerifier(Protocol):
    #: kbs-types TEE name this verifier handles: "sample", "snp", "tdx", "nvidia", ...
    tee: str

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        """Return the claims (a JSON object) or raise
        :class:`attestation.errors.VerificationError` /
        :class:`attestation.errors.EvidenceFormatError`.

        ``expected_report_data`` is the full digest the KBS computed
        (SHA-384 by default: 48 bytes); platforms compare it against their
        report-data field zero-padded (64 bytes) or, for devices, against the
        first 32 bytes. ``expected_init_data_hash`` (when the client sent
        init-data) must match the platform's init-data field."""
        ...
