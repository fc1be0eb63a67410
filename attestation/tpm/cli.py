"""``coco-verify tpm EVIDENCE [--at TIME] [--expect-report-data HEX]
[--init-data-digest HEX] [--trusted-ak PEM]... [--ak-ca PEM]``

EVIDENCE is guest-components' ``tpm`` evidence JSON. Always checked: the
quote's signature by ``ak_public``, the PCR digest and, when the evidence has
one, the event-log replay; the AK's trust with ``--trusted-ak`` / ``--ak-ca``
(otherwise ``ak_trust`` is ``"policy"``); the nonce with
``--expect-report-data``. Prints the claims as JSON and exits 0; a rejection
prints one line and exits 1 (2 for unreadable input or usage errors).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.tpm.evidence import MAX_EVIDENCE_JSON
from attestation.tpm.kbs import TpmVerifier
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
    parser.description = "Verify a TPM 2.0 quote (tpm evidence)."
    parser.add_argument("evidence", metavar="EVIDENCE", help="evidence JSON")
    parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument(
        "--expect-report-data", metavar="HEX", help="session report data (nonce: first 32 bytes)"
    )
    parser.add_argument("--init-data-digest", metavar="HEX", help="SHA-256 init-data digest PCR 8 must hold")
    parser.add_argument(
        "--trusted-ak", metavar="PEM", action="append", help="a trusted AK public key (repeatable)"
    )
    parser.add_argument("--ak-ca", metavar="PEM", help="CA certificate(s) that issue AK certificates")


def run(args: argparse.Namespace) -> int:
    try:
        now = parse_time(args.at) if args.at else datetime.now(UTC)
        doc = read_input(args.evidence, MAX_EVIDENCE_JSON)
        rd = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        init = parse_hex(args.init_data_digest, "--init-data-digest", 64)
        keys = [read_input(p, 1 << 20).decode() for p in args.trusted_ak or ()]
        ca = read_input(args.ak_ca, 1 << 20).decode() if args.ak_ca else None
        verifier = TpmVerifier(trusted_ak_keys=keys, ak_ca_pem=ca)
    except OSError as exc:
        return usage_error("tpm", f"cannot read input: {exc.strerror or exc}")
    except (AttestationError, ValueError) as exc:
        return usage_error("tpm", f"malformed input: {exc}")
    try:
        claims = verifier.check(doc, expected_report_data=rd, expected_init_data_hash=init, now=now)
    except EvidenceFormatError as exc:
        return usage_error("tpm", f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified("tpm", f"rejected: {exc}")
    if rd is None:
        print("coco-verify tpm: note: nonce not checked (no --expect-report-data)", file=sys.stderr)
    unchecked = [] if rd is not None else ["nonce (no --expect-report-data)"]
    return report_verified("tpm", claims, "TPM quote, AK trusted", unchecked=unchecked)
