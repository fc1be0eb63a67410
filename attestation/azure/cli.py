"""``coco-verify az-snp-vtpm|az-tdx-vtpm EVIDENCE [--at TIME]
[--expect-report-data HEX] [--init-data-digest HEX] [--root-ca PEM]
[--collateral FILE]``

EVIDENCE is the evidence JSON a guest sent (v0, v1 or v2). Always checked:
the vTPM quote's signature by the HCL report's attestation key, the PCR
digest, the HCL runtime data's binding into the SNP report / TD quote, and
the hardware report itself (VCEK chain to the pinned AMD roots; TD quote to
the Intel SGX Root CA) as of ``--at`` (default now). The nonce (and, for v2,
the HCL user-data) only with ``--expect-report-data``. Prints the claims as
JSON and exits 0; a rejection prints one line and exits 1 (2 for unreadable
input or usage errors).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from attestation.azure.errors import AzureFormatError
from attestation.azure.evidence import MAX_EVIDENCE_JSON
from attestation.azure.kbs import AzSnpVtpmVerifier, AzTdxVtpmVerifier, snp_claims
from attestation.azure.verify import check_init_data
from attestation.errors import AttestationError, EvidenceFormatError
from attestation.tdx.collateral import Collateral
from attestation.tdx.kbs import quote_claims
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


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify Azure vTPM evidence (HCL report, vTPM quote, SNP report or TD quote)."
    parser.add_argument("evidence", metavar="EVIDENCE", help="evidence JSON")
    parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument(
        "--expect-report-data", metavar="HEX", help="the quote's nonce (the session report data)"
    )
    parser.add_argument("--init-data-digest", metavar="HEX", help="SHA-256 init-data digest PCR 8 must hold")
    parser.add_argument(
        "--root-ca", metavar="PEM", help="az-tdx-vtpm: trust this root instead of Intel's (tests)"
    )
    parser.add_argument(
        "--collateral", metavar="FILE", help="az-tdx-vtpm: collateral JSON for the TCB status"
    )


def run(args: argparse.Namespace) -> int:
    tee = args.platform
    try:
        now = parse_time(args.at) if args.at else datetime.now(UTC)
        doc = read_input(args.evidence, MAX_EVIDENCE_JSON)
        rd = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        init = parse_hex(args.init_data_digest, "--init-data-digest", 64)
        opts: dict[str, Any] = {}
        if args.root_ca:
            opts["root_ca"] = load_pem_chain(read_input(args.root_ca, 1 << 20), "--root-ca")[0]
        if args.collateral:
            opts["collateral"] = Collateral.from_json(read_input(args.collateral, 16 << 20))
    except OSError as exc:
        return usage_error(tee, f"cannot read input: {exc.strerror or exc}")
    except AttestationError as exc:
        return usage_error(tee, f"malformed input: {exc}")
    try:
        if tee == "az-snp-vtpm":
            if opts:
                raise AzureFormatError("--root-ca/--collateral apply to az-tdx-vtpm only")
            vt, verified = AzSnpVtpmVerifier().verify_evidence(doc, expected_report_data=rd, now=now)
            claims = vt.tpm_claims(snp_claims(verified.report))
        else:
            vt, vq = AzTdxVtpmVerifier(**opts).verify_evidence(doc, expected_report_data=rd, now=now)
            claims = vt.tpm_claims(quote_claims(vq))
        check_init_data(vt.pcrs, init)
    except EvidenceFormatError as exc:
        return usage_error(tee, f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified(tee, f"rejected: {exc}")
    if rd is None:
        print(f"coco-verify {tee}: note: nonce not checked (no --expect-report-data)", file=sys.stderr)
    unchecked = [] if rd is not None else ["nonce (no --expect-report-data)"]
    if tee == "az-tdx-vtpm" and claims.get("tcb_status") is None:
        unchecked.append("TCB status (no --collateral)")
    return report_verified(tee, claims, "vTPM quote and TEE report, chains checked", unchecked=unchecked)
