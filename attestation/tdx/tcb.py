"""TCB status of an authentic quote from verified collateral, following
Intel's matching rules.

Matching rules (Intel's DCAP Quote Verification Library, intel/SGXDataCenterAttestationPrimitives
``QuoteVerification/QVL``, and Intel PCS API v4 "TCB Info" documentation; as also implemented by
Phala-Network/dcap-qvl ``src/verify.rs`` @ 9bffe30b4da53acc05f2e3a36fafc0f6418973b8):
TCB levels sorted highest first; the
first level whose 16 SGX components and PCESVN are all <= the PCK
certificate's, and (TDX) whose TDX components are all <= TEE_TCB_SVN (from
index 2 when TEE_TCB_SVN[1] > 0, as Intel's QVL does; dcap-qvl compares all 16),
gives the platform status; no match is an error. For TDX, TEE_TCB_SVN[1] > 0
selects the module identity ``TDX_%02X`` (MRSIGNERSEAM, masked
SEAMATTRIBUTES, module tcbLevel by ISVSVN = TEE_TCB_SVN[0]). The QE identity
must match MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES; its level is
chosen by ISVSVN. Statuses merge to the most severe; advisory IDs are united.
``Revoked`` is an error; every other status is returned for policy to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from attestation.tdx.collateral import (
    STATUS_SEVERITY,
    ModuleTcbLevel,
    QeIdentity,
    TcbInfo,
    VerifiedCollateral,
)
from attestation.tdx.errors import CollateralError, TdxVerificationError
from attestation.tdx.pck import PckExtension
from attestation.tdx.quote import EnclaveReport, Quote, TdReportBody

__all__ = ["TcbResult", "evaluate_tcb"]


def _merge(a: tuple[str, tuple[str, ...]], b: tuple[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    status = b[0] if STATUS_SEVERITY[b[0]] > STATUS_SEVERITY[a[0]] else a[0]
    ids = list(a[1])
    ids += [i for i in b[1] if i not in ids]
    return status, tuple(ids)


@dataclass(frozen=True)
class TcbResult:
    status: str
    advisory_ids: tuple[str, ...]
    platform_status: str
    qe_status: str
    module_status: str | None
    tcb_date: str
    tcb_evaluation_data_number: int
    tcb_info_issue_date: datetime
    tcb_info_next_update: datetime


def _module_status(tcb: TcbInfo, body: TdReportBody) -> tuple[str, tuple[str, ...]] | None:
    isvsvn, version = body.tee_tcb_svn[0], body.tee_tcb_svn[1]
    mrsigner, attrs, mask = tcb.module_mrsigner, tcb.module_attributes, tcb.module_attributes_mask
    if mrsigner is None or attrs is None or mask is None:
        raise CollateralError("TDX TCB info lacks tdxModule")
    levels: tuple[ModuleTcbLevel, ...] | None = None
    if version > 0 and tcb.module_identities:
        want = f"TDX_{version:02X}"
        ident = next((m for m in tcb.module_identities if m.id.upper() == want), None)
        if ident is None:
            raise CollateralError(f"TCB info has no TDX module identity {want}")
        mrsigner, attrs, mask, levels = (
            ident.mrsigner,
            ident.attributes,
            ident.attributes_mask,
            ident.tcb_levels,
        )
    if body.mr_signer_seam != mrsigner:
        raise TdxVerificationError("MRSIGNERSEAM does not match the TDX module identity")
    for a, m, s in zip(attrs, mask, body.seam_attributes, strict=True):
        if a & m != s & m:
            raise TdxVerificationError("SEAMATTRIBUTES do not match the TDX module identity")
    if levels is None:
        return None
    for lv in sorted(levels, key=lambda x: x.isvsvn, reverse=True):
        if isvsvn >= lv.isvsvn:
            return lv.status, lv.advisory_ids
    raise TdxVerificationError(f"TDX module ISVSVN {isvsvn} is below every module TCB level")


def _qe_status(qe: QeIdentity, report: EnclaveReport, tdx: bool) -> tuple[str, tuple[str, ...]]:
    want_id, versions = ("TD_QE", (2, 3)) if tdx else ("QE", (2,))
    if qe.id != want_id or qe.version not in versions:
        raise CollateralError(f"QE identity {qe.id} v{qe.version} does not fit this quote (need {want_id})")
    if report.mr_signer != qe.mrsigner:
        raise TdxVerificationError("QE MRSIGNER does not match the QE identity")
    if report.isv_prod_id != qe.isvprodid:
        raise TdxVerificationError("QE ISVPRODID does not match the QE identity")
    if report.misc_select & qe.miscselect_mask != qe.miscselect & qe.miscselect_mask:
        raise TdxVerificationError("QE MISCSELECT does not match the QE identity")
    for a, m, s in zip(qe.attributes, qe.attributes_mask, report.attributes, strict=True):
        if a & m != s & m:
            raise TdxVerificationError("QE ATTRIBUTES do not match the QE identity")
    if report.debug:
        raise TdxVerificationError("QE report is from a debug enclave")
    for lv in qe.tcb_levels:
        if report.isv_svn >= lv.isvsvn:
            return lv.status, lv.advisory_ids
    raise TdxVerificationError(f"QE ISVSVN {report.isv_svn} is below every QE identity TCB level")


def evaluate_tcb(quote: Quote, pck: PckExtension, collateral: VerifiedCollateral) -> TcbResult:
    """TCB status of an authentic quote (call after signatures and chains)."""
    tcb = collateral.tcb_info
    if pck.fmspc != tcb.fmspc:
        raise CollateralError(
            f"collateral is for FMSPC {tcb.fmspc.hex()}, the PCK certificate says {pck.fmspc.hex()}"
        )
    if pck.pce_id != tcb.pce_id:
        raise CollateralError("collateral PCE ID does not match the PCK certificate")
    tdx = quote.is_tdx
    if tdx and (tcb.id != "TDX" or tcb.version < 3):
        raise CollateralError("TDX quote with non-TDX TCB info")
    if not tdx and tcb.id != "SGX":
        raise CollateralError("SGX quote with non-SGX TCB info")
    body = quote.body if isinstance(quote.body, TdReportBody) else None
    platform: tuple[str, tuple[str, ...]] | None = None
    tcb_date = ""
    for lv in tcb.tcb_levels:
        if pck.pce_svn < lv.pce_svn:
            continue
        if any(a < b for a, b in zip(pck.sgx_tcb_components, lv.sgx_components, strict=True)):
            continue
        if body is not None:
            if len(lv.tdx_components) != 16:
                raise CollateralError("TDX TCB level without 16 TDX components")
            # Intel QVL (isTdxTcbHigherOrEqual): with a module version in
            # TEE_TCB_SVN[1], bytes 0..1 are judged by the module identity instead
            start = 2 if body.tee_tcb_svn[1] > 0 else 0
            if any(a < b for a, b in zip(body.tee_tcb_svn[start:], lv.tdx_components[start:], strict=True)):
                continue
        platform = (lv.status, lv.advisory_ids)
        tcb_date = lv.tcb_date
        break
    if platform is None:
        raise TdxVerificationError("no TCB level in the collateral matches this platform (TCB unsupported)")
    platform_only = platform[0]
    module = _module_status(tcb, body) if body is not None else None
    if module is not None:
        platform = _merge(platform, module)
    qe = _qe_status(collateral.qe_identity, quote.signature_data.qe_report, tdx)
    final = _merge(platform, qe)
    if final[0] == "Revoked":
        raise TdxVerificationError("TCB status is Revoked")
    return TcbResult(
        status=final[0],
        advisory_ids=final[1],
        platform_status=platform_only,
        qe_status=qe[0],
        module_status=module[0] if module else None,
        tcb_date=tcb_date,
        tcb_evaluation_data_number=tcb.tcb_evaluation_data_number,
        tcb_info_issue_date=tcb.issue_date,
        tcb_info_next_update=tcb.next_update,
    )
