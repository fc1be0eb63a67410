"""``coco-verify csv EVIDENCE [--hsk-cek FILE] [--pek-only]
[--expect-report-data HEX] [--at TIME]``

EVIDENCE is trustee's CSV evidence JSON. Full verification needs the chip's
HSK/CEK (``--hsk-cek``: Hygon KDS's ``hsk_cek.cert``), chained to the pinned
Hygon root key. ``--pek-only`` checks just the report signature by the PEK the
evidence carries, and says so (``"chain_verified": false``): useful to check
a report's integrity where the HSK/CEK are not at hand, not a trust decision.
Prints claims as JSON and exits 0; a rejection prints one line and exits 1
(2 for unreadable input or usage errors). ``--at`` is accepted for
uniformity (Hygon certificates carry no validity period).
"""

from __future__ import annotations

import argparse
import hmac

from attestation.csv.certs import CA_CERT_SIZE, CaCertificate, CsvCertificate, pinned_hrk
from attestation.csv.errors import CsvVerificationError
from attestation.csv.evidence import parse_evidence
from attestation.csv.kbs import csv_claims
from attestation.csv.report import CsvReport
from attestation.csv.verify import verify_chain, verify_report_signature
from attestation.verify_cli import Inputs, Verdict, add_evidence_arguments, read_input, run_verify

__all__ = ["configure", "run"]

_Loaded = tuple[CsvReport, CsvCertificate, str, bytes | None]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify Hygon CSV evidence (HRK → HSK → CEK → PEK → report)."
    parser.add_argument("--hsk-cek", metavar="FILE", help="the chip's hsk_cek.cert (HSK + CEK)")
    parser.add_argument("--pek-only", action="store_true", help="check only the report signature by the PEK")
    add_evidence_arguments(
        parser,
        evidence_help="CSV evidence JSON",
        report_data_help="REPORT_DATA (zero-padded to 64)",
        at_used=False,
    )


def _load(args: argparse.Namespace, inputs: Inputs) -> _Loaded:
    hsk_cek = read_input(args.hsk_cek, 8192) if args.hsk_cek else None
    report, pek, chip, _ = parse_evidence(inputs.evidence)
    return report, pek, chip, hsk_cek


def _check(args: argparse.Namespace, inputs: Inputs, loaded: _Loaded) -> Verdict:
    report, pek, chip, hsk_cek = loaded
    rd = inputs.report_data
    if hsk_cek is not None:
        hsk = CaCertificate.from_bytes(hsk_cek[:CA_CERT_SIZE])
        cek = CsvCertificate.from_bytes(hsk_cek[CA_CERT_SIZE:])
        verify_chain(report, pek, hrk=pinned_hrk(), hsk=hsk, cek=cek)
    elif args.pek_only:
        verify_report_signature(report, pek)
    else:
        raise CsvVerificationError(f"no HSK/CEK for chip {chip}: pass --hsk-cek (or --pek-only)")
    if rd is not None and not hmac.compare_digest(rd.ljust(64, b"\x00"), report.report_data):
        raise CsvVerificationError("REPORT_DATA does not match --expect-report-data")
    claims = csv_claims(report, chip)
    claims["chain_verified"] = hsk_cek is not None
    unchecked = [] if hsk_cek is not None else ["HSK/CEK chain to the Hygon root (--pek-only)"]
    return Verdict(claims, "CSV report signature", unchecked)


def run(args: argparse.Namespace) -> int:
    return run_verify(args, "csv", limit=1 << 20, load=_load, check=_check)
