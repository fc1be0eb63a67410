"""KBS-side verifiers for Azure confidential VMs with a paravisor vTPM:
``az-snp-vtpm`` and ``az-tdx-vtpm``.

The chain checked, in order (trustee's order, so the same evidence passes and
fails the same way):

1. the vTPM quote is signed by the attestation key found in the HCL report's
   runtime data (RSASSA-PKCS1-v1_5 / SHA-256);
2. the quote's nonce (``extraData``) equals the expected report data;
3. the PCR values match the quote's ``pcrDigest``;
4. the hardware report binds the runtime data: ``SHA-256(var_data)`` is the
   first 32 bytes of its REPORT_DATA (SNP report in the HCL; for TDX the TD
   quote, which is verified to the Intel SGX Root CA first);
5. evidence v2: the runtime data's ``user-data`` starts with the report data;
6. SNP: the report is signed by the VCEK, which chains to the pinned AMD
   roots, and comes from VMPL 0;
7. init-data: PCR 8 equals ``SHA-256(0^32 || init-data digest)``.

Claims have trustee's names and types (``az_snp_vtpm::parse_tee_evidence_az``
resp. the TDX claims, then ``tpm.pcrNN``, ``report_data`` = the quote nonce
hex, ``init_data`` = PCR 8 hex).
"""

from __future__ import annotations

import base64
import hmac
import logging
from datetime import datetime
from typing import Any

from attestation.azure.evidence import AzSnpEvidence, AzTdxEvidence, VtpmQuote
from attestation.azure.hcl import HclReport, HwReportType
from attestation.errors import EvidenceFormatError, VerificationError
from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.report import AttestationReport
from attestation.snp.verify import VerifiedReport, verify_report
from attestation.tdx.kbs import TdxVerifier, quote_claims
from attestation.tdx.quote import TEE_TYPE_TDX
from attestation.tdx.verify import VerifiedQuote
from attestation.tpm.quote import (
    INIT_DATA_PCR,
    TpmVerificationError,
    check_nonce,
    check_pcrs,
    init_data_pcr_value,
    verify_signature,
)
from attestation.tpm.structures import parse_attest

__all__ = [
    "AzSnpVtpmVerifier",
    "AzTdxVtpmVerifier",
    "AzureBindingError",
    "VerifiedVtpm",
    "snp_claims",
    "verify_vtpm_quote",
]

log = logging.getLogger(__name__)

_HCL_VMPL = 0


class AzureBindingError(VerificationError):
    """The HCL report, the vTPM quote and the hardware report are not bound together."""


class VerifiedVtpm:
    """A vTPM quote verified against the HCL report's attestation key."""

    def __init__(self, hcl: HclReport, quote: VtpmQuote, pcrs: dict[int, bytes], nonce: bytes) -> None:
        self.hcl = hcl
        self.quote = quote
        self.pcrs = pcrs
        self.nonce = nonce

    def tpm_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        """trustee's ``extend_claim``: ``tpm.pcrNN``, ``init_data`` (PCR 8) and ``report_data`` (nonce)."""
        claims["tpm"] = {f"pcr{i:02d}": v.hex() for i, v in sorted(self.pcrs.items())}
        if INIT_DATA_PCR in self.pcrs:
            claims["init_data"] = self.pcrs[INIT_DATA_PCR].hex()
        claims["report_data"] = self.nonce.hex()
        return claims


def verify_vtpm_quote(
    hcl_bytes: bytes,
    quote: VtpmQuote,
    *,
    want: HwReportType,
    expected_report_data: bytes | None,
) -> VerifiedVtpm:
    """Steps 1-3: HCL → AK → quote (→ nonce when ``expected_report_data`` is given)."""
    hcl = HclReport.from_bytes(hcl_bytes)
    if hcl.report_type is not want:
        raise EvidenceFormatError(f"HCL report holds a {hcl.report_type.name} report, {want.name} expected")
    attest = parse_attest(quote.message)
    verify_signature(quote.message, quote.signature, hcl.ak_public())
    if expected_report_data is not None:
        check_nonce(attest, expected_report_data)
    pcrs = check_pcrs(attest, list(quote.pcrs))
    return VerifiedVtpm(hcl, quote, pcrs, attest.extra_data)


def _check_runtime_binding(hcl: HclReport, hw_report_data: bytes, what: str) -> None:
    if not hmac.compare_digest(hcl.var_data_sha256, hw_report_data[:32]):
        raise AzureBindingError(f"HCL runtime data digest does not match the {what} report data")


def _check_user_data(hcl: HclReport, expected: bytes) -> None:
    ud = hcl.user_data()
    if ud is None or len(ud) < len(expected) or not hmac.compare_digest(ud[: len(expected)], expected):
        raise AzureBindingError("user-data in the HCL runtime data does not match the report data")


def _check_init_data(pcrs: dict[int, bytes], expected_init_data_hash: bytes | None) -> None:
    if expected_init_data_hash is None:
        return
    if INIT_DATA_PCR not in pcrs:
        raise TpmVerificationError(f"the quote does not cover PCR {INIT_DATA_PCR} (init-data)")
    if not hmac.compare_digest(pcrs[INIT_DATA_PCR], init_data_pcr_value(expected_init_data_hash)):
        raise TpmVerificationError(f"PCR {INIT_DATA_PCR} does not match the init-data digest")


def snp_claims(report: AttestationReport) -> dict[str, Any]:
    """trustee's ``parse_tee_evidence_az`` (values as strings, byte fields base64)."""

    def s(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    b64 = base64.b64encode
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
        "measurement": b64(report.measurement).decode(),
        "report_data": b64(report.report_data).decode(),
        "init_data": b64(report.host_data).decode(),
    }


class _Insecure:
    """TEST ONLY: skip the nonce and user-data binding (recorded evidence replay)."""

    def __init__(self, reason: str | None, tee: str) -> None:
        self.reason = reason
        if reason is not None:
            if not reason.strip():
                raise ValueError("say why the report-data binding is being skipped")
            log.warning("INSECURE %s verifier mode: report-data binding disabled (%s)", tee, reason)

    def expected(self, tee: str, expected_report_data: bytes) -> bytes | None:
        if self.reason is None:
            return expected_report_data
        log.warning("INSECURE: %s report-data binding not checked (%s)", tee, self.reason)
        return None

    def mark(self, claims: dict[str, Any]) -> dict[str, Any]:
        if self.reason is not None:
            claims["insecure_report_data_binding_skipped"] = True
        return claims


class AzSnpVtpmVerifier:
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
        self._insecure = _Insecure(insecure_skip_report_data_binding, self.tee)

    def verify_evidence(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, VerifiedReport]:
        ev = AzSnpEvidence.from_json(untrusted_evidence)
        vt = verify_vtpm_quote(
            ev.hcl_report, ev.tpm_quote, want=HwReportType.SNP, expected_report_data=expected_report_data
        )
        report = AttestationReport.from_bytes(vt.hcl.hw_report)
        _check_runtime_binding(vt.hcl, report.report_data, "SNP")
        if ev.version >= 2 and expected_report_data is not None:
            _check_user_data(vt.hcl, expected_report_data)
        verified = verify_report(report, EndorsementCert.from_bytes(ev.vcek), trust=self.trust, now=now)
        if report.vmpl != _HCL_VMPL:
            raise VerificationError(f"SNP report comes from VMPL {report.vmpl}, VMPL {_HCL_VMPL} is required")
        return vt, verified

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        vt, verified = self.verify_evidence(
            untrusted_evidence,
            expected_report_data=self._insecure.expected(self.tee, expected_report_data),
            now=now,
        )
        _check_init_data(vt.pcrs, expected_init_data_hash)
        return self._insecure.mark(vt.tpm_claims(snp_claims(verified.report)))


class AzTdxVtpmVerifier:
    """Verify ``az-tdx-vtpm`` evidence (v0, v1, v2). The TD quote is verified
    by :class:`~attestation.tdx.kbs.TdxVerifier` (Intel SGX Root CA;
    TCB status with collateral); its keyword options are accepted here too.

    :param insecure_skip_report_data_binding: TEST ONLY, see :class:`AzSnpVtpmVerifier`.
    """

    tee = "az-tdx-vtpm"

    def __init__(self, *, insecure_skip_report_data_binding: str | None = None, **tdx_options: Any) -> None:
        self.tdx = TdxVerifier(**tdx_options)
        self._insecure = _Insecure(insecure_skip_report_data_binding, self.tee)

    def verify_evidence(
        self, untrusted_evidence: Any, *, expected_report_data: bytes | None, now: datetime
    ) -> tuple[VerifiedVtpm, VerifiedQuote]:
        ev = AzTdxEvidence.from_json(untrusted_evidence)
        vt = verify_vtpm_quote(
            ev.hcl_report, ev.tpm_quote, want=HwReportType.TDX, expected_report_data=expected_report_data
        )
        vq = self.tdx.verify_quote_bytes(ev.td_quote, now=now)
        if vq.quote.header.tee_type != TEE_TYPE_TDX:
            raise VerificationError("expected a TDX quote (v4/v5), got an SGX quote")
        _check_runtime_binding(vt.hcl, vq.quote.td_body.report_data, "TD quote")
        if ev.version >= 2 and expected_report_data is not None:
            _check_user_data(vt.hcl, expected_report_data)
        return vt, vq

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        vt, vq = self.verify_evidence(
            untrusted_evidence,
            expected_report_data=self._insecure.expected(self.tee, expected_report_data),
            now=now,
        )
        _check_init_data(vt.pcrs, expected_init_data_hash)
        return self._insecure.mark(vt.tpm_claims(quote_claims(vq)))
