"""Authenticity of ``tpm`` evidence (trustee's order, then two checks beyond it):

1. the quote's ``TPMT_SIGNATURE`` verifies with ``ak_public``;
2. the PCR values match the quote's ``pcrDigest``;
3. the nonce (report data truncated or zero-padded to 32 bytes; to 64 when
   the quote carries 64, as earlier guest-components attesters and trustee's
   recorded vector do), unless no report data is expected;
4. PCR 8 against the init-data digest, when one is expected;
5. AK trust: ``"configured"`` (a trusted key), ``"certificate"`` (an AK
   certificate issued by a configured CA, valid at ``now``) or ``"policy"``
   (nothing configured: left to the policy); an untrusted AK is refused when
   anything is configured;
6. with an event log, every SHA-256 PCR it extends replays to the quoted value.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation._binding import resize
from attestation._x509 import issued_by
from attestation.eventlog.tcg import EV_NO_ACTION, ParsedEventLog, parse_event_log
from attestation.tpm.errors import TpmFormatError, TpmVerificationError
from attestation.tpm.evidence import TpmEvidence
from attestation.tpm.quote import (
    INIT_DATA_PCR,
    check_nonce,
    check_pcrs,
    init_data_pcr_value,
    verify_signature,
)
from attestation.tpm.structures import ALG_SHA256, Attest, parse_attest, parse_signature

__all__ = ["AkAnchors", "VerifiedTpm", "replay_pcrs", "spki", "verify_tpm_evidence"]

_NONCE_SIZE = 32
_STARTUP_LOCALITY = b"StartupLocality\x00"


@dataclass(frozen=True)
class AkAnchors:
    """What makes an attestation key trusted: its SubjectPublicKeyInfo (DER)
    among ``keys``, or an AK certificate issued directly by one of ``cas``."""

    keys: frozenset[bytes] = frozenset()
    cas: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class VerifiedTpm:
    """``tpm`` evidence whose quote, PCRs and bindings verified."""

    evidence: TpmEvidence
    attest: Attest
    pcrs: dict[int, bytes]
    #: "configured", "certificate" or "policy"
    ak_trust: str
    event_log: ParsedEventLog | None


def replay_pcrs(log: ParsedEventLog) -> dict[int, bytes]:
    """SHA-256 value of every PCR the log extends (PCR 0 starts at its StartupLocality)."""
    values: dict[int, bytes] = {}
    for e in log.entries:
        if e.event_type == EV_NO_ACTION:
            if e.index == 0 and e.event.startswith(_STARTUP_LOCALITY) and len(e.event) == 17:
                values[0] = bytes(31) + e.event[16:17]
            continue
        for d in e.digests:
            if d.alg == ALG_SHA256:
                values[e.index] = hashlib.sha256(values.get(e.index, bytes(32)) + d.digest).digest()
    return values


def spki(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    out: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return out


def _ak_trust(ev: TpmEvidence, anchors: AkAnchors, now: datetime) -> str:
    key = spki(ev.ak_key())
    if key in anchors.keys:
        return "configured"
    if anchors.cas and ev.ak_certificate is not None:
        try:
            cert = x509.load_der_x509_certificate(ev.ak_certificate)
        except ValueError as exc:
            raise TpmFormatError("ak_certificate is not a DER certificate") from exc
        if not hmac.compare_digest(spki(cert.public_key()), key):
            raise TpmVerificationError("ak_certificate certifies another key than ak_public")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise TpmVerificationError("ak_certificate is not valid at the verification time")
        for ca in anchors.cas:
            if issued_by(cert, ca) and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                return "certificate"
        raise TpmVerificationError("ak_certificate does not chain to a configured AK CA")
    if anchors.keys or anchors.cas:
        raise TpmVerificationError("the attestation key is neither configured nor certified")
    return "policy"


def _check_event_log(raw: bytes, pcrs: dict[int, bytes]) -> ParsedEventLog:
    parsed = parse_event_log(raw)
    for index, value in sorted(replay_pcrs(parsed).items()):
        if index not in pcrs:
            raise TpmVerificationError(f"event log extends PCR {index}, which the quote does not cover")
        if not hmac.compare_digest(pcrs[index], value):
            raise TpmVerificationError(f"event log does not replay to the quoted PCR {index}")
    return parsed


def verify_tpm_evidence(
    untrusted_evidence: Any,
    *,
    expected_report_data: bytes | None,
    expected_init_data_hash: bytes | None,
    anchors: AkAnchors,
    now: datetime,
) -> VerifiedTpm:
    """Steps 1-6; ``expected_report_data=None`` leaves the nonce unchecked (``coco-verify``)."""
    ev = TpmEvidence(untrusted_evidence)
    attest = parse_attest(ev.message)
    verify_signature(ev.message, parse_signature(ev.signature), ev.ak_key())
    pcrs = check_pcrs(attest, ev.pcrs)
    # current attesters send the report data resized to 32 bytes, earlier ones to 64
    size = 64 if len(attest.extra_data) == 64 else _NONCE_SIZE
    if expected_report_data is not None:
        check_nonce(attest, resize(expected_report_data, size))
    if expected_init_data_hash is not None and (
        INIT_DATA_PCR not in pcrs
        or not hmac.compare_digest(pcrs[INIT_DATA_PCR], init_data_pcr_value(expected_init_data_hash))
    ):
        raise TpmVerificationError(f"TPM PCR[{INIT_DATA_PCR}] doesn't match expected initdata hash")
    trust = _ak_trust(ev, anchors, now)
    event_log = _check_event_log(ev.event_log, pcrs) if ev.event_log is not None else None
    return VerifiedTpm(ev, attest, pcrs, trust, event_log)
