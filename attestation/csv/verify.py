"""Authenticity of a CSV attestation report: the pinned Hygon root key (HRK,
self-signed) → HSK → CEK → the PEK carried in the evidence → the report,
SM2/SM3 throughout."""

from __future__ import annotations

from attestation.csv.certs import USAGE_CEK, USAGE_HSK, USAGE_PEK, CaCertificate, CsvCertificate
from attestation.csv.errors import CsvCertError
from attestation.csv.report import CsvReport

__all__ = ["verify_chain", "verify_report_signature"]


def verify_report_signature(report: CsvReport, pek: CsvCertificate) -> None:
    """The report is signed by ``pek``; raise CsvCertError otherwise."""
    if not pek.key.verify(report.signed, report.r, report.s):
        raise CsvCertError("CSV attestation report signature does not verify with the PEK")


def verify_chain(
    report: CsvReport, pek: CsvCertificate, *, hrk: CaCertificate, hsk: CaCertificate, cek: CsvCertificate
) -> None:
    """HRK → HSK → CEK → PEK → report; raise CsvCertError at the first link that fails."""
    if hsk.usage != USAGE_HSK or not hsk.signed_by(hrk):
        raise CsvCertError("HSK certificate is not signed by the Hygon root key")
    if cek.usage != USAGE_CEK or not cek.signed_by(hsk.key):
        raise CsvCertError("CEK certificate is not signed by the HSK")
    if pek.usage != USAGE_PEK or not pek.signed_by(cek.key):
        raise CsvCertError("PEK certificate is not signed by this chip's CEK")
    verify_report_signature(report, pek)
