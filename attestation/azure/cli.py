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
from typing import Any

from attestation.azure.errors import AzureFormatError
from attestation.azure.evidence import MAX_EVIDENCE_JSON
from attestation.azure.kbs import AzSnpVtpmVerifier, AzTdxVtpmVerifier, snp_claims
from attestation.azure.verify import check_init_data
from attestation.tdx.kbs import quote_claims
from attestation.verify_cli import Inputs, Verdict, add_evidence_arguments, dcap_options, run_verify

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify Azure vTPM evidence (HCL report, vTPM quote, SNP report or TD quote)."
    add_evidence_arguments(
        parser,
        evidence_help="evidence JSON",
        report_data_help="the quote's nonce (the session report data)",
        init_data_help="SHA-256 init-data digest PCR 8 must hold",
    )
    parser.add_argument(
        "--root-ca", metavar="PEM", help="az-tdx-vtpm: trust this root instead of Intel's (tests)"
    )
    parser.add_argument(
        "--collateral", metavar="FILE", help="az-tdx-vtpm: collateral JSON for the TCB status"
    )


def _check(args: argparse.Namespace, inputs: Inputs, opts: dict[str, Any]) -> Verdict:
    tee = args.platform
    doc, rd, now = inputs.evidence, inputs.report_data, inputs.now
    if tee == "az-snp-vtpm":
        if opts:
            raise AzureFormatError("--root-ca/--collateral apply to az-tdx-vtpm only")
        vt, verified = AzSnpVtpmVerifier().verify_evidence(doc, expected_report_data=rd, now=now)
        claims = vt.tpm_claims(snp_claims(verified.report))
    else:
        vt, vq = AzTdxVtpmVerifier(**opts).verify_evidence(doc, expected_report_data=rd, now=now)
        claims = vt.tpm_claims(quote_claims(vq))
    check_init_data(vt.pcrs, inputs.init_data)
    if rd is None:
        print(f"coco-verify {tee}: note: nonce not checked (no --expect-report-data)", file=sys.stderr)
    unchecked = []
    if tee == "az-tdx-vtpm" and claims.get("tcb_status") is None:
        unchecked.append("TCB status (no --collateral)")
    return Verdict(claims, "vTPM quote and TEE report, chains checked", unchecked)


def run(args: argparse.Namespace) -> int:
    return run_verify(args, args.platform, limit=MAX_EVIDENCE_JSON, load=dcap_options, check=_check)
