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
from attestation.csv.verify import verify_chain, verify_report_signature
from attestation.errors import AttestationError, EvidenceFormatError
from attestation.verify_cli import (
    not_verified,
    parse_hex,
    parse_time,
    read_input,
    usage_error,
)
from attestation.verify_cli import verified as report_verified

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify Hygon CSV evidence (HRK → HSK → CEK → PEK → report)."
    parser.add_argument("evidence", metavar="EVIDENCE", help="CSV evidence JSON")
    parser.add_argument("--hsk-cek", metavar="FILE", help="the chip's hsk_cek.cert (HSK + CEK)")
    parser.add_argument("--pek-only", action="store_true", help="check only the report signature by the PEK")
    parser.add_argument("--expect-report-data", metavar="HEX", help="REPORT_DATA (zero-padded to 64)")
    parser.add_argument("--at", metavar="TIME", help="accepted for uniformity; unused")


def run(args: argparse.Namespace) -> int:
    try:
        if args.at:
            parse_time(args.at)
        doc = read_input(args.evidence, 1 << 20)
        rd = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        hsk_cek = read_input(args.hsk_cek, 8192) if args.hsk_cek else None
        report, pek, chip, _ = parse_evidence(doc)
    except OSError as exc:
        return usage_error("csv", f"cannot read input: {exc.strerror or exc}")
    except AttestationError as exc:
        return usage_error("csv", f"malformed input: {exc}")
    try:
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
    except EvidenceFormatError as exc:
        return usage_error("csv", f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified("csv", f"rejected: {exc}")
    claims = csv_claims(report, chip)
    claims["chain_verified"] = hsk_cek is not None
    unchecked = [] if rd is not None else ["nonce (no --expect-report-data)"]
    if hsk_cek is None:
        unchecked.append("HSK/CEK chain to the Hygon root (--pek-only)")
    return report_verified("csv", claims, "CSV report signature", unchecked=unchecked)
