"""Paths of the real TDX vectors (see tests/fixtures/evidence/tdx/MANIFEST.md)."""

from __future__ import annotations

from datetime import UTC, datetime

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
