"""Paths of the real TDX vectors (see tests/fixtures/evidence/tdx/MANIFEST.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from attestation.tdx.collateral import Collateral
from attestation.tdx.pck import intel_sgx_root_ca
from tests.support.vectors import evidence, vector

TDX = evidence("tdx")

Q4 = vector("tdx", "trustee/tdx_quote_4.dat")
Q5 = vector("tdx", "trustee/tdx_quote_5.dat")
Q6 = vector("tdx", "trustee/tdx_quote_6.dat")
OCCLUM = vector("tdx", "trustee/occlum_quote.dat")
QVL_TDX = vector("tdx", "dcap-qvl/tdx_quote")
QVL_TDX_COLL = vector("tdx", "dcap-qvl/tdx_quote_collateral.json")
QVL_OUTDATED = vector("tdx", "dcap-qvl/tdx_quote_outdated")
QVL_OUTDATED_COLL = vector("tdx", "dcap-qvl/tdx_quote_outdated_collateral.json")
QVL_SGX = vector("tdx", "dcap-qvl/sgx_quote")
QVL_SGX_COLL = vector("tdx", "dcap-qvl/sgx_quote_collateral.json")
TDREPORT = vector("tdx", "guest-components/tdx_report_1.bin")
CCEL = vector("tdx", "trustee/CCEL_data")

TDX_QUOTES = [Q4, Q5, Q6, QVL_TDX, QVL_OUTDATED]
ALL_QUOTES = [*TDX_QUOTES, OCCLUM, QVL_SGX]

#: inside every PCK chain's validity and before any fixture's expiry
FIXED_NOW = datetime(2026, 6, 1, tzinfo=UTC)
#: inside the validity windows of the dcap-qvl collateral
QVL_TDX_AT = datetime(2025, 7, 1, tzinfo=UTC)
QVL_SGX_AT = datetime(2025, 7, 1, tzinfo=UTC)
QVL_OUTDATED_AT = datetime(2026, 3, 1, tzinfo=UTC)
#: inside trustee tcbInfo.json / enclaveIdentity.json validity
TRUSTEE_COLL_AT = datetime(2025, 11, 1, tzinfo=UTC)

#: the packaged Intel SGX Root CA every vector chains to
ROOT = intel_sgx_root_ca()


def collateral_from(p: Path) -> Collateral:
    return Collateral.from_json(p.read_text())


def tcb_signing_chain() -> str:
    """The Intel TCB signing chain (PEM) of the dcap-qvl collateral."""
    return str(json.loads(QVL_TDX_COLL.read_text())["tcb_info_issuer_chain"])


def trustee_collateral() -> Collateral:
    """trustee's raw PCS tcbInfo / enclaveIdentity answers as one bundle."""
    return Collateral.from_pcs_responses(
        tcb_info_body=(TDX / "trustee/tcbInfo.json").read_text(),
        tcb_info_issuer_chain=tcb_signing_chain(),
        qe_identity_body=(TDX / "trustee/enclaveIdentity.json").read_text(),
        qe_identity_issuer_chain=tcb_signing_chain(),
    )
