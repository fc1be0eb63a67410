"""Azure vTPM evidence JSON, as guest-components sends it and trustee reads it.

``az-snp-vtpm``::

    v0: {"quote": <vtpm quote>, "report": [bytes], "vcek": "<PEM>"}
    v1/v2: {"version": 1|2, "tpm_quote": <tpm quote>, "hcl_report": b64url,
            "vcek": b64url(DER)}

``az-tdx-vtpm``::

    v0: {"tpm_quote": <vtpm quote>, "hcl_report": [bytes], "td_quote": [bytes]}
    v1/v2: {"version": 1|2, "tpm_quote": <tpm quote>, "hcl_report": b64url,
            "td_quote": b64url}

A *tpm quote* is ``{"signature": hex, "message": hex, "pcrs": [hex, ...]}``
(v0: the same members as JSON byte arrays). ``signature`` is the bare
RSASSA-PKCS1-v1_5/SHA-256 signature by the vTPM AK over ``message`` (a
``TPMS_ATTEST``); ``pcrs`` are the 24 SHA-256 PCRs. Version 2 additionally
puts the caller's report data into the HCL runtime data's ``user-data``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.azure.errors import HclFormatError
from attestation.azure.hcl import MAX_HCL_REPORT
from coco_common.b64 import b64url_decode
from coco_common.strict_json import strict_loads

__all__ = ["MAX_EVIDENCE_JSON", "AzSnpEvidence", "AzTdxEvidence", "VtpmQuote", "load_json"]

#: v0 evidence spells bytes as JSON integer arrays (~4 characters a byte)
MAX_EVIDENCE_JSON = 256 * 1024
_MAX_PCRS = 24
_MAX_BLOB = 64 * 1024


def load_json(untrusted: Any, what: str) -> Mapping[str, Any]:
    """Untrusted evidence as a JSON object (decoded strictly, at most
    :data:`MAX_EVIDENCE_JSON` bytes, when given as text)."""
    if isinstance(untrusted, (str, bytes, bytearray)):
        untrusted = strict_loads(
            untrusted, limit=MAX_EVIDENCE_JSON, error=HclFormatError, what=f"{what} evidence"
        )
    if not isinstance(untrusted, Mapping):
        raise HclFormatError(f"{what} evidence must be a JSON object")
    return untrusted


def _byte_array(v: Any, what: str, limit: int = _MAX_BLOB) -> bytes:
    if not isinstance(v, list) or len(v) > limit:
        raise HclFormatError(f"{what} must be a JSON byte array of at most {limit} bytes")
    if not all(type(b) is int and 0 <= b <= 255 for b in v):
        raise HclFormatError(f"{what} holds a value that is not a byte")
    return bytes(v)


def _hex(v: Any, what: str, limit: int = _MAX_BLOB) -> bytes:
    if not isinstance(v, str) or len(v) > 2 * limit:
        raise HclFormatError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(v)
    except ValueError as exc:
        raise HclFormatError(f"{what} is not hex") from exc


def _b64url(v: Any, what: str, limit: int = _MAX_BLOB) -> bytes:
    if not isinstance(v, str) or len(v) > limit * 4 // 3 + 4:
        raise HclFormatError(f"{what} must be a base64url string")
    try:
        return b64url_decode(v)
    except ValueError as exc:
        raise HclFormatError(f"{what} is not base64url") from exc


def _exact(doc: Mapping[str, Any], keys: set[str], what: str) -> None:
    if set(doc) != keys:
        raise HclFormatError(f"{what} must have exactly the members {sorted(keys)}")


@dataclass(frozen=True)
class VtpmQuote:
    signature: bytes
    message: bytes
    pcrs: tuple[bytes, ...]

    @classmethod
    def from_json(cls, untrusted: Any, *, legacy: bool) -> VtpmQuote:
        if not isinstance(untrusted, Mapping):
            raise HclFormatError("tpm quote must be a JSON object")
        _exact(untrusted, {"signature", "message", "pcrs"}, "tpm quote")
        pcrs = untrusted["pcrs"]
        if not isinstance(pcrs, list) or len(pcrs) > _MAX_PCRS:
            raise HclFormatError(f"tpm quote pcrs must be a list of at most {_MAX_PCRS} values")
        conv = _byte_array if legacy else _hex
        return cls(
            signature=conv(untrusted["signature"], "tpm quote signature", 1024),
            message=conv(untrusted["message"], "tpm quote message", 4096),
            pcrs=tuple(conv(p, "tpm quote pcr", 64) for p in pcrs),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature.hex(),
            "message": self.message.hex(),
            "pcrs": [p.hex() for p in self.pcrs],
        }


@dataclass(frozen=True)
class AzSnpEvidence:
    version: int
    tpm_quote: VtpmQuote
    hcl_report: bytes
    #: DER (v1/v2) or PEM (v0) VCEK
    vcek: bytes

    @classmethod
    def from_json(cls, untrusted: Any) -> AzSnpEvidence:
        doc = load_json(untrusted, "az-snp-vtpm")
        if "version" not in doc:
            _exact(doc, {"quote", "report", "vcek"}, "az-snp-vtpm v0 evidence")
            if not isinstance(doc["vcek"], str) or len(doc["vcek"]) > _MAX_BLOB:
                raise HclFormatError("az-snp-vtpm v0 vcek must be a PEM string")
            return cls(
                0,
                VtpmQuote.from_json(doc["quote"], legacy=True),
                _byte_array(doc["report"], "report", MAX_HCL_REPORT),
                doc["vcek"].encode(),
            )
        _exact(doc, {"version", "tpm_quote", "hcl_report", "vcek"}, "az-snp-vtpm evidence")
        if doc["version"] not in (1, 2) or type(doc["version"]) is not int:
            raise HclFormatError("az-snp-vtpm evidence version must be 1 or 2")
        return cls(
            doc["version"],
            VtpmQuote.from_json(doc["tpm_quote"], legacy=False),
            _b64url(doc["hcl_report"], "hcl_report", MAX_HCL_REPORT),
            _b64url(doc["vcek"], "vcek"),
        )

    def to_json(self) -> dict[str, Any]:
        """The v1/v2 wire form (v0 evidence is re-encoded as v1)."""
        return {
            "version": max(self.version, 1),
            "tpm_quote": self.tpm_quote.to_json(),
            "hcl_report": base64.urlsafe_b64encode(self.hcl_report).decode(),
            "vcek": base64.urlsafe_b64encode(self.vcek).decode(),
        }


@dataclass(frozen=True)
class AzTdxEvidence:
    version: int
    tpm_quote: VtpmQuote
    hcl_report: bytes
    td_quote: bytes

    @classmethod
    def from_json(cls, untrusted: Any) -> AzTdxEvidence:
        doc = load_json(untrusted, "az-tdx-vtpm")
        if "version" not in doc:
            _exact(doc, {"tpm_quote", "hcl_report", "td_quote"}, "az-tdx-vtpm v0 evidence")
            return cls(
                0,
                VtpmQuote.from_json(doc["tpm_quote"], legacy=True),
                _byte_array(doc["hcl_report"], "hcl_report", MAX_HCL_REPORT),
                _byte_array(doc["td_quote"], "td_quote"),
            )
        _exact(doc, {"version", "tpm_quote", "hcl_report", "td_quote"}, "az-tdx-vtpm evidence")
        if doc["version"] not in (1, 2) or type(doc["version"]) is not int:
            raise HclFormatError("az-tdx-vtpm evidence version must be 1 or 2")
        return cls(
            doc["version"],
            VtpmQuote.from_json(doc["tpm_quote"], legacy=False),
            _b64url(doc["hcl_report"], "hcl_report", MAX_HCL_REPORT),
            _b64url(doc["td_quote"], "td_quote"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": max(self.version, 1),
            "tpm_quote": self.tpm_quote.to_json(),
            "hcl_report": base64.urlsafe_b64encode(self.hcl_report).decode(),
            "td_quote": base64.urlsafe_b64encode(self.td_quote).decode(),
        }
