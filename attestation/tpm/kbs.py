"""The KBS adapter for ``tpm``.

Checks (trustee's order): the quote's ``TPMT_SIGNATURE`` by ``ak_public``;
the PCR values against ``pcrDigest``; the nonce (report data truncated or
zero-padded to 32 bytes; to 64 when the quote carries 64, as earlier
guest-components attesters and trustee's recorded vector do); PCR 8 against
the init-data digest. Then, beyond
trustee:

* **AK trust.** trustee leaves it to the policy (``input.tpm.ak_public`` in a
  ``trusted_ak`` reference value). Here it can also be enforced by
  configuration: ``trusted_ak_keys`` (PEM public keys) and/or ``ak_ca_pem``
  (an AK certificate in the evidence, ``ak_certificate``, must chain to it and
  certify the same key). When either is configured an untrusted AK is
  rejected; with neither, the claims say ``ak_trust: "policy"``.
* **Event log.** With ``event_log`` in the evidence every SHA-256 PCR it
  extends must replay to the quoted value (PCR 0 from its ``StartupLocality``).

Claims as trustee: ``init_data`` (PCR 8 hex), ``report_data`` (nonce hex),
``ak_public`` (as sent) and ``pcr00``..``pcr23``; plus ``ak_trust`` and
``uefi_event_logs`` when a log was replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

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
from attestation.tpm.structures import ALG_SHA256, parse_attest, parse_signature

__all__ = ["TpmVerifier", "replay_pcrs"]

log = logging.getLogger(__name__)

_NONCE_SIZE = 32
_STARTUP_LOCALITY = b"StartupLocality\x00"


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


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(key: Any) -> bytes:
    out: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return out


class TpmVerifier:
    """:param trusted_ak_keys: PEM public keys (or paths to PEM files) of trusted AKs.
    :param ak_ca_pem: PEM file (or PEM text) of the CA(s) AK certificates must chain to
        (the AK certificate is issued directly by one of them).
    :param insecure_skip_report_data_binding: TEST ONLY, a reason: the quote's nonce is
        not compared (recorded evidence replay); logged and marked in the claims."""

    tee = "tpm"

    def __init__(
        self,
        *,
        trusted_ak_keys: Sequence[str] | None = None,
        ak_ca_pem: str | None = None,
        insecure_skip_report_data_binding: str | None = None,
    ) -> None:
        reason = insecure_skip_report_data_binding
        if reason is not None:
            if not reason.strip():
                raise ValueError("say why the report-data binding is being skipped")
            log.warning("INSECURE tpm verifier mode: nonce binding disabled (%s)", reason)
        self._insecure = reason
        self._trusted: set[bytes] = set()
        for item in trusted_ak_keys or ():
            text = item.encode() if "-----BEGIN" in item else Path(item).read_bytes()
            self._trusted.add(_spki(serialization.load_pem_public_key(text)))
        self._cas: list[x509.Certificate] = []
        if ak_ca_pem:
            text = ak_ca_pem.encode() if "-----BEGIN" in ak_ca_pem else Path(ak_ca_pem).read_bytes()
            self._cas = x509.load_pem_x509_certificates(text)

    def _ak_trust(self, ev: TpmEvidence, now: datetime) -> str:
        spki = _spki(ev.ak_key())
        if spki in self._trusted:
            return "configured"
        if self._cas and ev.ak_certificate is not None:
            try:
                cert = x509.load_der_x509_certificate(ev.ak_certificate)
            except ValueError as exc:
                raise TpmFormatError("ak_certificate is not a DER certificate") from exc
            if not hmac.compare_digest(_spki(cert.public_key()), spki):
                raise TpmVerificationError("ak_certificate certifies another key than ak_public")
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise TpmVerificationError("ak_certificate is not valid at the verification time")
            for ca in self._cas:
                if _issued_by(cert, ca) and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                    return "certificate"
            raise TpmVerificationError("ak_certificate does not chain to a configured AK CA")
        if self._trusted or self._cas:
            raise TpmVerificationError("the attestation key is neither configured nor certified")
        return "policy"

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        if self._insecure is not None:
            log.warning("INSECURE: tpm nonce binding not checked (%s)", self._insecure)
        claims = self.check(
            untrusted_evidence,
            expected_report_data=None if self._insecure is not None else expected_report_data,
            expected_init_data_hash=expected_init_data_hash,
            now=now,
        )
        if self._insecure is not None:
            claims["insecure_report_data_binding_skipped"] = True
        return claims

    def check(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes | None,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        """:meth:`verify`; ``expected_report_data=None`` leaves the nonce unchecked (``coco-verify``)."""
        ev = TpmEvidence(untrusted_evidence)
        attest = parse_attest(ev.message)
        verify_signature(ev.message, parse_signature(ev.signature), ev.ak_key())
        pcrs = check_pcrs(attest, ev.pcrs)
        # current attesters send the report data resized to 32 bytes, earlier ones to 64
        size = 64 if len(attest.extra_data) == 64 else _NONCE_SIZE
        if expected_report_data is not None:
            check_nonce(attest, expected_report_data[:size].ljust(size, b"\x00"))
        if expected_init_data_hash is not None and (
            INIT_DATA_PCR not in pcrs
            or not hmac.compare_digest(pcrs[INIT_DATA_PCR], init_data_pcr_value(expected_init_data_hash))
        ):
            raise TpmVerificationError(f"TPM PCR[{INIT_DATA_PCR}] doesn't match expected initdata hash")
        trust = self._ak_trust(ev, now)
        claims: dict[str, Any] = {
            "init_data": pcrs[INIT_DATA_PCR].hex() if INIT_DATA_PCR in pcrs else "",
            "report_data": attest.extra_data.hex(),
            "ak_public": ev.ak_public_b64,
        }
        for i, v in sorted(pcrs.items()):
            claims[f"pcr{i:02d}"] = v.hex()
        claims["ak_trust"] = trust
        if ev.event_log is not None:
            parsed = parse_event_log(ev.event_log)
            for index, value in sorted(replay_pcrs(parsed).items()):
                if index not in pcrs:
                    raise TpmVerificationError(
                        f"event log extends PCR {index}, which the quote does not cover"
                    )
                if not hmac.compare_digest(pcrs[index], value):
                    raise TpmVerificationError(f"event log does not replay to the quoted PCR {index}")
            claims["uefi_event_logs"] = parsed.to_trustee_json()
        return claims
