"""Paths of the real TDX vectors (see shared/fixtures/evidence/tdx/MANIFEST.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

TDX = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "evidence" / "tdx"
if not TDX.is_dir():  # the checkout may live elsewhere; fall back to the shared tree
    TDX = Path("/work/shared/fixtures/evidence/tdx")

Q4 = TDX / "trustee/tdx_quote_4.dat"
Q5 = TDX / "trustee/tdx_quote_5.dat"
Q6 = TDX / "trustee/tdx_quote_6.dat"
OCCLUM = TDX / "trustee/occlum_quote.dat"
QVL_TDX = TDX / "dcap-qvl/tdx_quote"
QVL_TDX_COLL = TDX / "dcap-qvl/tdx_quote_collateral.json"
QVL_OUTDATED = TDX / "dcap-qvl/tdx_quote_outdated"
QVL_OUTDATED_COLL = TDX / "dcap-qvl/tdx_quote_outdated_collateral.json"
QVL_SGX = TDX / "dcap-qvl/sgx_quote"
QVL_SGX_COLL = TDX / "dcap-qvl/sgx_quote_collateral.json"
TDREPORT = TDX / "guest-components/tdx_report_1.bin"
CCEL = TDX / "trustee/CCEL_data"

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
