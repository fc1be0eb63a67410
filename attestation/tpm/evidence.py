"""The ``tpm`` evidence envelope (trustee's)::

{"ak_public": <base64 DER SubjectPublicKeyInfo>,
 "tpm_quote": {"signature": <base64 TPMT_SIGNATURE>, "message": <base64 TPMS_ATTEST>,
               "pcrs": [<64 hex>, ...]},
 "event_log": <base64 TCG event log> (optional),
 "ak_certificate": <base64 DER> (optional)}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.tpm.errors import TpmFormatError
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = ["MAX_EVIDENCE_JSON", "TpmEvidence"]

MAX_EVIDENCE_JSON = 8 * 1024 * 1024
_MAX_EVENT_LOG = 4 * 1024 * 1024


def _b64(v: Any, what: str, limit: int) -> bytes:
    if not isinstance(v, str) or len(v) > limit * 4 // 3 + 4:
        raise TpmFormatError(f"tpm evidence: {what} must be a base64 string")
    try:
        return b64_decode(v)
    except ValueError as exc:
        raise TpmFormatError(f"tpm evidence: {what} is not standard base64") from exc


class TpmEvidence:
    """Untrusted ``tpm`` evidence (JSON text or a parsed value), decoded and size-checked."""

    def __init__(self, untrusted: Any) -> None:
        if isinstance(untrusted, (str, bytes, bytearray)):
            untrusted = strict_loads(
                untrusted, limit=MAX_EVIDENCE_JSON, error=TpmFormatError, what="tpm evidence"
            )
        if not isinstance(untrusted, Mapping):
            raise TpmFormatError("tpm evidence must be a JSON object")
        extra = set(untrusted) - {"ak_public", "tpm_quote", "event_log", "ak_certificate"}
        if extra or not {"ak_public", "tpm_quote"} <= set(untrusted):
            raise TpmFormatError(
                "tpm evidence needs ak_public and tpm_quote (and optional event_log, ak_certificate)"
            )
        q = untrusted["tpm_quote"]
        if not isinstance(q, Mapping) or set(q) != {"signature", "message", "pcrs"}:
            raise TpmFormatError("tpm_quote must have exactly signature, message and pcrs")
        if not isinstance(q["pcrs"], list) or len(q["pcrs"]) > 24:
            raise TpmFormatError("tpm_quote.pcrs must be a list of at most 24 hex values")
        pcrs = []
        for p in q["pcrs"]:
            if not isinstance(p, str) or len(p) != 64:
                raise TpmFormatError("every PCR must be 64 hex characters (SHA-256)")
            try:
                pcrs.append(bytes.fromhex(p))
            except ValueError as exc:
                raise TpmFormatError("PCR value is not hex") from exc
        self.ak_public_b64: str = untrusted["ak_public"]
        self.ak_public_der = _b64(untrusted["ak_public"], "ak_public", 4096)
        self.signature = _b64(q["signature"], "tpm_quote.signature", 4096)
        self.message = _b64(q["message"], "tpm_quote.message", 4096)
        self.pcrs = pcrs
        self.event_log = (
            _b64(untrusted["event_log"], "event_log", _MAX_EVENT_LOG) if untrusted.get("event_log") else None
        )
        self.ak_certificate = (
            _b64(untrusted["ak_certificate"], "ak_certificate", 16 * 1024)
            if untrusted.get("ak_certificate")
            else None
        )

    def ak_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        try:
            key = serialization.load_der_public_key(self.ak_public_der)
        except ValueError as exc:
            raise TpmFormatError("ak_public is not a DER public key") from exc
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise TpmFormatError("ak_public must be an RSA or EC key")
        return key
