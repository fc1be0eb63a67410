"""Verify Azure confidential VMs' vTPM evidence (``az-snp-vtpm``,
``az-tdx-vtpm``): authenticity and binding, returning the verified parts.

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

The claims and the KBS adapters are in :mod:`attestation.azure.kbs`.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from attestation.azure.errors import AzureBindingError, AzureFormatError, AzureVerificationError
from attestation.azure.evidence import AzSnpEvidence, AzTdxEvidence, VtpmQuote
from attestation.azure.hcl import HclReport, HwReportType
from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.report import AttestationReport
from attestation.snp.verify import VerifiedReport, verify_report
from attestation.tdx.kbs import TdxVerifier
from attestation.tdx.quote import TEE_TYPE_TDX
from attestation.tdx.verify import VerifiedQuote
from attestation.tpm.errors import TpmVerificationError
from attestation.tpm.quote import (
    INIT_DATA_PCR,
    check_nonce,
    check_pcrs,
    init_data_pcr_value,
    verify_signature,
)
from attestation.tpm.structures import parse_attest

__all__ = [
    "VerifiedVtpm",
    "check_init_data",
    "verify_az_snp",
    "verify_az_tdx",
    "verify_vtpm_quote",
]

_HCL_VMPL = 0


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
        raise AzureFormatError(f"HCL report holds a {hcl.report_type.name} report, {want.name} expected")
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


def check_init_data(pcrs: dict[int, bytes], expected_init_data_hash: bytes | None) -> None:
    """Step 7: PCR 8 is ``SHA-256(0^32 || expected_init_data_hash)`` (nothing to check without one)."""
    if expected_init_data_hash is None:
        return
    if INIT_DATA_PCR not in pcrs:
        raise TpmVerificationError(f"the quote does not cover PCR {INIT_DATA_PCR} (init-data)")
    if not hmac.compare_digest(pcrs[INIT_DATA_PCR], init_data_pcr_value(expected_init_data_hash)):
        raise TpmVerificationError(f"PCR {INIT_DATA_PCR} does not match the init-data digest")


def verify_az_snp(
    untrusted_evidence: Any, *, trust: TrustStore, expected_report_data: bytes | None, now: datetime
) -> tuple[VerifiedVtpm, VerifiedReport]:
    """Steps 1-6 for ``az-snp-vtpm`` evidence (v0, v1, v2); without
    ``expected_report_data`` the nonce and user-data are not compared."""
    ev = AzSnpEvidence.from_json(untrusted_evidence)
    vt = verify_vtpm_quote(
        ev.hcl_report, ev.tpm_quote, want=HwReportType.SNP, expected_report_data=expected_report_data
    )
    report = AttestationReport.from_bytes(vt.hcl.hw_report)
    _check_runtime_binding(vt.hcl, report.report_data, "SNP")
    if ev.version >= 2 and expected_report_data is not None:
        _check_user_data(vt.hcl, expected_report_data)
    verified = verify_report(report, EndorsementCert.from_bytes(ev.vcek), trust=trust, now=now)
    if report.vmpl != _HCL_VMPL:
        raise AzureVerificationError(
            f"SNP report comes from VMPL {report.vmpl}, VMPL {_HCL_VMPL} is required"
        )
    return vt, verified


def verify_az_tdx(
    untrusted_evidence: Any, *, tdx: TdxVerifier, expected_report_data: bytes | None, now: datetime
) -> tuple[VerifiedVtpm, VerifiedQuote]:
    """Steps 1-5 for ``az-tdx-vtpm`` evidence (v0, v1, v2); the TD quote is
    verified by ``tdx`` (Intel SGX Root CA; TCB status with collateral)."""
    ev = AzTdxEvidence.from_json(untrusted_evidence)
    vt = verify_vtpm_quote(
        ev.hcl_report, ev.tpm_quote, want=HwReportType.TDX, expected_report_data=expected_report_data
    )
    vq = tdx.verify_quote_bytes(ev.td_quote, now=now)
    if vq.quote.header.tee_type != TEE_TYPE_TDX:
        raise AzureVerificationError("expected a TDX quote (v4/v5), got an SGX quote")
    _check_runtime_binding(vt.hcl, vq.quote.td_body.report_data, "TD quote")
    if ev.version >= 2 and expected_report_data is not None:
        _check_user_data(vt.hcl, expected_report_data)
    return vt, vq
