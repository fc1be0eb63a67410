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

from attestation.tpm.evidence import MAX_EVIDENCE_JSON
from attestation.tpm.kbs import TpmVerifier
from attestation.verify_cli import Inputs, Verdict, add_evidence_arguments, read_input, run_verify

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify a TPM 2.0 quote (tpm evidence)."
    add_evidence_arguments(
        parser,
        evidence_help="evidence JSON",
        report_data_help="session report data (nonce: first 32 bytes)",
        init_data_help="SHA-256 init-data digest PCR 8 must hold",
    )
    parser.add_argument(
        "--trusted-ak", metavar="PEM", action="append", help="a trusted AK public key (repeatable)"
    )
    parser.add_argument("--ak-ca", metavar="PEM", help="CA certificate(s) that issue AK certificates")


def _load(args: argparse.Namespace, _: Inputs) -> TpmVerifier:
    keys = [read_input(p, 1 << 20).decode() for p in args.trusted_ak or ()]
    ca = read_input(args.ak_ca, 1 << 20).decode() if args.ak_ca else None
    return TpmVerifier(trusted_ak_keys=keys, ak_ca_pem=ca)


def _check(_: argparse.Namespace, inputs: Inputs, verifier: TpmVerifier) -> Verdict:
    claims = verifier.check(
        inputs.evidence,
        expected_report_data=inputs.report_data,
        expected_init_data_hash=inputs.init_data,
        now=inputs.now,
    )
    if inputs.report_data is None:
        print("coco-verify tpm: note: nonce not checked (no --expect-report-data)", file=sys.stderr)
    return Verdict(claims, "TPM quote, AK trusted")


def run(args: argparse.Namespace) -> int:
    return run_verify(args, "tpm", limit=MAX_EVIDENCE_JSON, load=_load, check=_check)
