"""The KBS adapter for ``tpm`` (the checks are :mod:`attestation.tpm.verify`'s).

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

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation._files import PEM_BUNDLE_LIMIT, PEM_LIMIT, read_config_file
from attestation.replay import BindingSkip
from attestation.tpm.quote import INIT_DATA_PCR
from attestation.tpm.verify import AkAnchors, VerifiedTpm, spki, verify_tpm_evidence

__all__ = ["TpmVerifier", "tpm_claims"]

log = logging.getLogger(__name__)


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
        self._insecure = BindingSkip(insecure_skip_report_data_binding, tee=self.tee, what="nonce binding")
        trusted: set[bytes] = set()
        for item in trusted_ak_keys or ():
            text = (
                item.encode() if "-----BEGIN" in item else read_config_file(item, PEM_LIMIT, "trusted AK key")
            )
            trusted.add(spki(serialization.load_pem_public_key(text)))
        cas: list[x509.Certificate] = []
        if ak_ca_pem:
            text = (
                ak_ca_pem.encode()
                if "-----BEGIN" in ak_ca_pem
                else read_config_file(ak_ca_pem, PEM_BUNDLE_LIMIT, "AK CA certificates")
            )
            cas = x509.load_pem_x509_certificates(text)
        self.anchors = AkAnchors(frozenset(trusted), tuple(cas))

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        claims = self.check(
            untrusted_evidence,
            expected_report_data=self._insecure.expected(expected_report_data),
            expected_init_data_hash=expected_init_data_hash,
            now=now,
        )
        return self._insecure.mark(claims)

    def check(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes | None,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        """:meth:`verify`; ``expected_report_data=None`` leaves the nonce unchecked (``coco-verify``)."""
        v = verify_tpm_evidence(
            untrusted_evidence,
            expected_report_data=expected_report_data,
            expected_init_data_hash=expected_init_data_hash,
            anchors=self.anchors,
            now=now,
        )
        return tpm_claims(v)


def tpm_claims(v: VerifiedTpm) -> dict[str, Any]:
    """trustee's claims (``init_data``, ``report_data``, ``ak_public``, ``pcrNN``)
    plus ``ak_trust`` and, with a replayed log, ``uefi_event_logs``."""
    claims: dict[str, Any] = {
        "init_data": v.pcrs[INIT_DATA_PCR].hex() if INIT_DATA_PCR in v.pcrs else "",
        "report_data": v.attest.extra_data.hex(),
        "ak_public": v.evidence.ak_public_b64,
    }
    for i, value in sorted(v.pcrs.items()):
        claims[f"pcr{i:02d}"] = value.hex()
    claims["ak_trust"] = v.ak_trust
    if v.event_log is not None:
        claims["uefi_event_logs"] = v.event_log.to_trustee_json()
    return claims
