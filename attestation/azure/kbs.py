"""The KBS adapters for Azure confidential VMs with a paravisor vTPM
(``az-snp-vtpm``, ``az-tdx-vtpm``): :class:`attestation.verifier.EvidenceVerifier`
implementations over :mod:`attestation.azure.verify`.

Claims have trustee's names and types (``az_snp_vtpm::parse_tee_evidence_az``
resp. the TDX claims, then ``tpm.pcrNN``, ``report_data`` = the quote nonce
hex, ``init_data`` = PCR 8 hex).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from attestation.azure.verify import VerifiedVtpm, check_init_data, verify_az_snp, verify_az_tdx
from attestation.replay import BindingSkip
from attestation.snp.certs import TrustStore
from attestation.snp.report import AttestationReport
from attestation.snp.verify import VerifiedReport
from attestation.tdx.kbs import TdxVerifier, quote_claims
from attestation.tdx.verify import VerifiedQuote
from coco_common.b64 import b64_encode

__all__ = ["AzSnpVtpmVerifier", "AzTdxVtpmVerifier", "snp_claims"]

log = logging.getLogger(__name__)


def snp_claims(report: AttestationReport) -> dict[str, Any]:
    """trustee's ``parse_tee_evidence_az`` (values as strings, byte fields base64)."""

    def s(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return {
        "policy_abi_major": s(report.policy.abi_major),
        "policy_abi_minor": s(report.policy.abi_minor),
        "policy_smt_allowed": s(report.policy.smt_allowed),
        "policy_migrate_ma": s(report.policy.migrate_ma),
        "policy_debug_allowed": s(report.policy.debug),
        "policy_single_socket": s(report.policy.single_socket),
        "reported_tcb_bootloader": s(report.reported_tcb.bootloader),
        "reported_tcb_tee": s(report.reported_tcb.tee),
        "reported_tcb_snp": s(report.reported_tcb.snp),
        "reported_tcb_microcode": s(report.reported_tcb.microcode),
        "platform_tsme_enabled": s(report.platform_info.tsme_enabled),
        "platform_smt_enabled": s(report.platform_info.smt_enabled),
        "measurement": b64_encode(report.measurement),
        "report_data": b64_encode(report.report_data),
        "init_data": b64_encode(report.host_data),
    }


class _AzVtpmVerifier(ABC):
    """What both Azure adapters share: the TEST-ONLY binding skip, the
    init-data check on PCR 8 and trustee's ``tpm.*`` claim layout."""

    tee: str
    _insecure: BindingSkip

    @abstractmethod
    def _verify_parts(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, dict[str, Any]]:
        """The verified vTPM quote and the hardware report's claims."""

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        vt, claims = self._verify_parts(
            untrusted_evidence,
            expected_report_data=self._insecure.expected(expected_report_data),
            now=now,
        )
        check_init_data(vt.pcrs, expected_init_data_hash)
        return self._insecure.mark(vt.tpm_claims(claims))


class AzSnpVtpmVerifier(_AzVtpmVerifier):
    """Verify ``az-snp-vtpm`` evidence (v0, v1, v2).

    :param trust: pinned AMD roots (default: the packaged ones).
    :param insecure_skip_report_data_binding: TEST ONLY, a reason string: the
        quote nonce and HCL user-data are not compared with the session's
        report data, so recorded evidence can drive a live KBS handshake.
        Logged at WARNING and marked in the claims.
    """

    tee = "az-snp-vtpm"

    def __init__(
        self, *, trust: TrustStore | None = None, insecure_skip_report_data_binding: str | None = None
    ) -> None:
        self.trust = trust if trust is not None else TrustStore.builtin()
        self._insecure = BindingSkip(insecure_skip_report_data_binding, tee=self.tee)

    def verify_evidence(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, VerifiedReport]:
        return verify_az_snp(
            untrusted_evidence, trust=self.trust, expected_report_data=expected_report_data, now=now
        )

    def _verify_parts(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, dict[str, Any]]:
        vt, verified = self.verify_evidence(
            untrusted_evidence, expected_report_data=expected_report_data, now=now
        )
        return vt, snp_claims(verified.report)


class AzTdxVtpmVerifier(_AzVtpmVerifier):
    """Verify ``az-tdx-vtpm`` evidence (v0, v1, v2). The TD quote is verified
    by :class:`~attestation.tdx.kbs.TdxVerifier` (Intel SGX Root CA;
    TCB status with collateral); its keyword options are accepted here too.

    :param insecure_skip_report_data_binding: TEST ONLY, see :class:`AzSnpVtpmVerifier`.
    """

    tee = "az-tdx-vtpm"

    def __init__(self, *, insecure_skip_report_data_binding: str | None = None, **tdx_options: Any) -> None:
        self.tdx = TdxVerifier(**tdx_options)
        self._insecure = BindingSkip(insecure_skip_report_data_binding, tee=self.tee)

    def verify_evidence(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, VerifiedQuote]:
        return verify_az_tdx(
            untrusted_evidence, tdx=self.tdx, expected_report_data=expected_report_data, now=now
        )

    def _verify_parts(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, dict[str, Any]]:
        vt, vq = self.verify_evidence(untrusted_evidence, expected_report_data=expected_report_data, now=now)
        return vt, quote_claims(vq)
