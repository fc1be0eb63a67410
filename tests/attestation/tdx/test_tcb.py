"""TCB status (:mod:`attestation.tdx.tcb`): Intel's matching rules, checked against
dcap-qvl as an independent implementation; wrong FMSPC; module identities."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from attestation.errors import VerificationError
from attestation.tdx.collateral import TcbInfo
from attestation.tdx.errors import CollateralError
from attestation.tdx.verify import verify_quote

from ._data import (
    Q4,
    Q6,
    QVL_OUTDATED,
    QVL_OUTDATED_AT,
    QVL_OUTDATED_COLL,
    QVL_SGX,
    QVL_SGX_AT,
    QVL_SGX_COLL,
    QVL_TDX,
    QVL_TDX_AT,
    QVL_TDX_COLL,
    ROOT,
    TDX,
    TRUSTEE_COLL_AT,
    collateral_from,
    trustee_collateral,
)


def test_tdx_quote_up_to_date() -> None:
    v = verify_quote(
        QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=collateral_from(QVL_TDX_COLL)
    )
    assert v.tcb is not None
    assert (v.tcb.status, v.tcb.platform_status, v.tcb.qe_status, v.tcb.module_status) == (
        "UpToDate",
        "UpToDate",
        "UpToDate",
        "UpToDate",
    )
    assert v.tcb.advisory_ids == ()


def test_sgx_quote_status_and_advisories() -> None:
    v = verify_quote(
        QVL_SGX.read_bytes(), root_ca=ROOT, now=QVL_SGX_AT, collateral=collateral_from(QVL_SGX_COLL)
    )
    assert v.tcb is not None and v.pck_ca == "processor"
    assert v.tcb.status == "ConfigurationAndSWHardeningNeeded"
    assert v.tcb.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")


@pytest.mark.parametrize(
    ("quote", "coll", "at"),
    [(QVL_TDX, QVL_TDX_COLL, QVL_TDX_AT), (QVL_SGX, QVL_SGX_COLL, QVL_SGX_AT)],
    ids=["tdx", "sgx"],
)
def test_same_status_as_dcap_qvl(quote: Path, coll: Path, at: datetime) -> None:
    import dcap_qvl  # the differential oracle (a dev dependency)

    root_der = (TDX / "dcap-qvl/TrustedRootCA.der").read_bytes()
    theirs = dcap_qvl.verify_with_root_ca(
        quote.read_bytes(),
        dcap_qvl.QuoteCollateralV3.from_json(coll.read_text()),
        root_der,
        int(at.timestamp()),
    )
    ours = verify_quote(quote.read_bytes(), root_ca=ROOT, now=at, collateral=collateral_from(coll))
    assert ours.tcb is not None
    assert (ours.tcb.status, list(ours.tcb.advisory_ids)) == (theirs.status, list(theirs.advisory_ids))


def test_outdated_quote_matches_no_tcb_level() -> None:
    with pytest.raises(VerificationError, match="no TCB level"):
        verify_quote(
            QVL_OUTDATED.read_bytes(),
            root_ca=ROOT,
            now=QVL_OUTDATED_AT,
            collateral=collateral_from(QVL_OUTDATED_COLL),
        )


def test_collateral_for_the_wrong_fmspc() -> None:
    with pytest.raises(CollateralError, match="FMSPC"):
        verify_quote(Q4.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=collateral_from(QVL_TDX_COLL))


def test_raw_pcs_responses_quote6_out_of_date() -> None:
    v = verify_quote(Q6.read_bytes(), root_ca=ROOT, now=TRUSTEE_COLL_AT, collateral=trustee_collateral())
    assert v.tcb is not None
    assert v.tcb.platform_status == "OutOfDate"
    assert v.tcb.module_status == "UpToDate" and v.tcb.qe_status == "UpToDate"
    assert v.tcb.status == "OutOfDate"
    assert TcbInfo.from_signed_text(trustee_collateral().tcb_info).fmspc.hex() == "00a06d080000"


def test_module_svn_is_judged_by_the_module_identity_not_the_platform_level() -> None:
    """Intel's rule: with TEE_TCB_SVN[1] > 0, TDX components 0..1 are skipped in the
    platform match and TDX_01's own levels decide the module status."""
    from dataclasses import replace

    from attestation.tdx.collateral import verify_collateral
    from attestation.tdx.quote import TdReportBody
    from attestation.tdx.tcb import evaluate_tcb

    coll = verify_collateral(collateral_from(QVL_TDX_COLL), root=ROOT, now=QVL_TDX_AT)
    v = verify_quote(QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT)
    body = v.quote.body
    assert isinstance(body, TdReportBody) and body.tee_tcb_svn[:3] == bytes([6, 1, 3])

    def status(svn0: int) -> tuple[str, str | None]:
        q = replace(v.quote, body=replace(body, tee_tcb_svn=bytes([svn0]) + body.tee_tcb_svn[1:]))
        r = evaluate_tcb(q, v.pck, coll)
        return r.status, r.module_status

    assert status(4) == ("UpToDate", "UpToDate")  # below the platform level's component 0 (5): skipped
    assert status(3) == ("OutOfDate", "OutOfDate")  # TDX_01 level isvsvn 2 -> OutOfDate
    with pytest.raises(VerificationError, match="ISVSVN 1"):
        status(1)
