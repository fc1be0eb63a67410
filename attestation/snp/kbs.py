"""The KBS-side SNP verifier (``tee = "snp"``), implementing
:class:`attestation.verifier.EvidenceVerifier`.

It takes trustee's SNP evidence JSON, finds the VCEK/VLEK (from the
evidence's ``cert_chain``, else from a :class:`~attestation.snp.endorsements.KdsClient`
cache or, only when explicitly configured, AMD KDS), verifies the report
against the pinned roots at ``now``, checks the REPORT_DATA and HOST_DATA
bindings and (like trustee) VMPL 0, and returns trustee-compatible claims
(:meth:`~attestation.snp.verify.VerifiedReport.trustee_claims`).

KDS fetches are off by default: ``SnpVerifier()`` is fully offline.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from attestation.replay import BindingSkip
from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.endorsements import KdsClient
from attestation.snp.errors import EndorsementKeyUnavailable, SigningKeyMismatch, SnpVerificationError
from attestation.snp.evidence import SnpEvidence
from attestation.snp.report import SigningKey
from attestation.snp.verify import VerifiedReport, check_binding, check_revocation, verify_report
from coco_common.http import sync_client

__all__ = ["SnpVerifier"]


class SnpVerifier:
    """Verify trustee SNP evidence. Trust material and time are explicit.

    :param trust: pinned AMD roots (default: the ones shipped with the package).
    :param kds: where to find a VCEK when the evidence has none (cache dir,
        optionally AMD KDS); ``None`` means the evidence must carry it.
    :param required_vmpl: VMPL the report must come from (trustee: 0); ``None``
        leaves VMPL to a policy.
    :param min_report_version: lowest report version accepted (trustee uses 3;
        version 2 is accepted by default because its product is taken from the
        verified chain).
    :param kds_cache_dir: shortcut for ``kds=KdsClient(cache_dir=...)`` (offline),
        usable from the KBS config (``[attestation_service.verifier_config.snp]``).
    :param kds_fetch: also fetch missing VCEKs (and CRLs) from AMD KDS (network; off by default).
    :param check_crl: reject chains with a revoked ASK/ASVK or VCEK/VLEK, using the
        product's CRL from the KDS cache folder (``crl-<product>.der``) or KDS;
        no current CRL is an error.
    :param insecure_skip_report_data_binding: TEST ONLY: why REPORT_DATA is not
        compared (recorded evidence replayed into a live handshake); see
        :class:`attestation.replay.BindingSkip`.
    """

    tee = "snp"

    def __init__(
        self,
        *,
        trust: TrustStore | None = None,
        kds: KdsClient | None = None,
        required_vmpl: int | None = 0,
        min_report_version: int = 2,
        kds_cache_dir: str | Path | None = None,
        kds_fetch: bool = False,
        check_crl: bool = False,
        insecure_skip_report_data_binding: str | None = None,
    ) -> None:
        self.trust = trust if trust is not None else TrustStore.builtin()
        if kds is None and (kds_cache_dir is not None or kds_fetch):
            kds = KdsClient(
                cache_dir=Path(kds_cache_dir) if kds_cache_dir is not None else None,
                # trust_env: AMD KDS is on the internet and may sit behind the host's proxy
                http=sync_client(trust_env=True) if kds_fetch else None,
                offline=not kds_fetch,
            )
        self.kds = kds
        if check_crl and kds is None:
            raise ValueError("check_crl needs kds_cache_dir or kds_fetch (where the CRL comes from)")
        self.check_crl = check_crl
        self.required_vmpl = required_vmpl
        self.min_report_version = min_report_version
        self._insecure = BindingSkip(
            insecure_skip_report_data_binding, tee=self.tee, what="REPORT_DATA binding"
        )

    def endorsement_for(self, evidence: SnpEvidence) -> EndorsementCert:
        """The VCEK/VLEK to check ``evidence`` with."""
        report = evidence.report
        wanted = report.key_info.signing_key
        if evidence.cert_chain:
            keys = [e for e in evidence.cert_chain if e.cert_type in ("VCEK", "VLEK")]
            if len(keys) > 1:
                raise SigningKeyMismatch("evidence cert_chain has more than one VCEK/VLEK")
            if keys:
                cert = EndorsementCert.from_bytes(keys[0].data)
                if keys[0].cert_type != cert.kind.name:
                    raise SigningKeyMismatch(
                        f"cert_chain entry typed {keys[0].cert_type} holds a {cert.kind.name}"
                    )
                return cert
        if self.kds is not None and wanted in (SigningKey.VCEK, SigningKey.VLEK):
            return self.kds.get_vcek(report)
        raise EndorsementKeyUnavailable(
            "SNP evidence has no VCEK/VLEK in cert_chain and KDS lookup is disabled"
        )

    def verify_evidence(
        self, untrusted_evidence: Any, *, now: datetime, endorsement: EndorsementCert | None = None
    ) -> VerifiedReport:
        """Parse and verify authenticity (and revocation when configured); no binding, no VMPL check."""
        evidence = SnpEvidence.from_json(untrusted_evidence)
        if evidence.report.version < self.min_report_version:
            raise SnpVerificationError(
                f"report version {evidence.report.version} is below the minimum {self.min_report_version}"
            )
        key = endorsement if endorsement is not None else self.endorsement_for(evidence)
        verified = verify_report(evidence.report, key, trust=self.trust, now=now)
        if self.check_crl:
            assert self.kds is not None
            crl = self.kds.get_crl(self.trust.roots[verified.product], now=now)
            check_revocation(verified, crl, now=now)
        return verified

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        verified = self.verify_evidence(untrusted_evidence, now=now)
        if self.required_vmpl is not None and verified.report.vmpl != self.required_vmpl:
            raise SnpVerificationError(
                f"report comes from VMPL {verified.report.vmpl}, VMPL {self.required_vmpl} is required"
            )
        check_binding(
            verified,
            expected_report_data=self._insecure.expected(expected_report_data),
            expected_init_data_hash=expected_init_data_hash,
        )
        return self._insecure.mark(verified.trustee_claims())
