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
import hmac
from typing import Any

from attestation.sgx.errors import SgxVerificationError
from attestation.sgx.kbs import SgxVerifier, sgx_claims
from attestation.verify_cli import Inputs, Verdict, add_evidence_arguments, dcap_options, run_verify
from coco_common.b64 import b64_encode

__all__ = ["configure", "run"]

_MAX = 256 * 1024


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify an Intel SGX DCAP quote (v3)."
    add_evidence_arguments(
        parser,
        evidence_metavar="QUOTE",
        evidence_help="raw quote, or evidence JSON",
        report_data_help="REPORT_DATA (zero-padded to 64 bytes)",
    )
    parser.add_argument("--collateral", metavar="FILE", help="collateral JSON (dcap-qvl QuoteCollateralV3)")
    parser.add_argument("--root-ca", metavar="PEM", help="trust this root instead of Intel's (tests)")


def _check(_: argparse.Namespace, inputs: Inputs, opts: dict[str, Any]) -> Verdict:
    raw, rd = inputs.evidence, inputs.report_data
    doc: Any = raw if raw.lstrip()[:1] == b"{" else {"quote": b64_encode(raw)}
    v = SgxVerifier(**opts).verify_evidence(doc, now=inputs.now)
    claims = sgx_claims(v)
    if rd is not None and not hmac.compare_digest(rd.ljust(64, b"\x00"), v.quote.body.report_data):
        raise SgxVerificationError("REPORT_DATA is different from the expected value")
    unchecked = [] if claims.get("tcb_status") is not None else ["TCB status (no --collateral)"]
    return Verdict(claims, "SGX quote, PCK chain to the Intel SGX Root CA", unchecked)


def run(args: argparse.Namespace) -> int:
    return run_verify(args, "sgx", limit=_MAX, load=dcap_options, check=_check)
