"""The sample TEEs' evidence envelope (trustee's ``sample`` shape)::

    {"svn": "<string>", "report_data": "<standard base64 of the runtime data>"}

No signature exists: the report data is carried as given (not padded, not
hashed), which is what trustee's sample verifier compares byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.sample.errors import SampleFormatError
from coco_common.b64 import b64_decode, b64_encode

__all__ = ["SampleEvidence"]


@dataclass(frozen=True)
class SampleEvidence:
    svn: str
    #: the ``report_data`` field as sent (standard base64)
    report_data_b64: str

    @classmethod
    def of(cls, svn: str, report_data: bytes) -> SampleEvidence:
        return cls(svn, b64_encode(report_data))

    @classmethod
    def from_json(cls, untrusted: Any, tee: str) -> SampleEvidence:
        """From parsed JSON; ``tee`` names the TEE in error messages."""
        if not isinstance(untrusted, Mapping):
            raise SampleFormatError(f"{tee} evidence must be a JSON object")
        if set(untrusted) - {"svn", "report_data"}:
            raise SampleFormatError(f"{tee} evidence has unknown fields")
        svn, rd = untrusted.get("svn"), untrusted.get("report_data", "")
        if not isinstance(svn, str) or not isinstance(rd, str):
            raise SampleFormatError(f"{tee} evidence needs string svn and report_data")
        return cls(svn, rd)

    def report_data(self, tee: str) -> bytes:
        """The decoded report data (strict standard base64)."""
        try:
            return b64_decode(self.report_data_b64)
        except ValueError as exc:
            raise SampleFormatError(f"{tee} report_data is not standard base64") from exc

    def to_json(self) -> dict[str, str]:
        return {"svn": self.svn, "report_data": self.report_data_b64}
