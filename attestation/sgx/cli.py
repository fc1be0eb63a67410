"""``coco-verify sgx QUOTE [--at TIME] [--expect-report-data HEX]
[--collateral FILE] [--root-ca PEM]``

QUOTE is a raw SGX DCAP quote (v3) or trustee's evidence JSON
``{"quote": <base64>}``. Authenticity is always checked (PCK chain to the
Intel SGX Root CA at ``--at``, default now); the TCB status needs
``--collateral``. Prints the claims as JSON and exits 0; a rejection prints
one line and exits 1 (2 for unreadable input or usage errors).
"""

from __future__ import annotations

import argparse
import base64
import hmac
from datetime import UTC, datetime
from typing import Any

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.sgx.errors import SgxVerificationError
from attestation.sgx.kbs import SgxVerifier, sgx_claims
from attestation.tdx.collateral import Collateral
from attestation.tdx.pck import load_pem_chain
from attestation.verify_cli import (
    not_verified,
    parse_hex,
    parse_time,
    read_input,
    usage_error,
)
from attestation.verify_cli import verified as report_verified

__all__ = ["configure", "run"]

_MAX = 256 * 1024


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify an Intel SGX DCAP quote (v3)."
    parser.add_argument("quote", metavar="QUOTE", help="raw quote, or evidence JSON")
    parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument("--expect-report-data", metavar="HEX", help="REPORT_DATA (zero-padded to 64 bytes)")
    parser.add_argument("--collateral", metavar="FILE", help="collateral JSON (dcap-qvl QuoteCollateralV3)")
    parser.add_argument("--root-ca", metavar="PEM", help="trust this root instead of Intel's (tests)")


def run(args: argparse.Namespace) -> int:
    try:
        now = parse_time(args.at) if args.at else datetime.now(UTC)
        raw = read_input(args.quote, _MAX)
        doc: Any = raw if raw.lstrip()[:1] == b"{" else {"quote": base64.b64encode(raw).decode()}
        rd = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        opts: dict[str, Any] = {}
        if args.root_ca:
            opts["root_ca"] = load_pem_chain(read_input(args.root_ca, 1 << 20), "--root-ca")[0]
        if args.collateral:
            opts["collateral"] = Collateral.from_json(read_input(args.collateral, 16 << 20))
    except OSError as exc:
        return usage_error("sgx", f"cannot read input: {exc.strerror or exc}")
    except AttestationError as exc:
        return usage_error("sgx", f"malformed input: {exc}")
    try:
        v = SgxVerifier(**opts).verify_evidence(doc, now=now)
        claims = sgx_claims(v)
        if rd is not None and not hmac.compare_digest(rd.ljust(64, b"\x00"), v.quote.body.report_data):
            raise SgxVerificationError("REPORT_DATA is different from the expected value")
    except EvidenceFormatError as exc:
        return usage_error("sgx", f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified("sgx", f"rejected: {exc}")
    unchecked = [] if rd is not None else ["nonce (no --expect-report-data)"]
    if claims.get("tcb_status") is None:
        unchecked.append("TCB status (no --collateral)")
    return report_verified(
        "sgx", claims, "SGX quote, PCK chain to the Intel SGX Root CA", unchecked=unchecked
    )
