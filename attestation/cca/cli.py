"""``coco-verify cca EVIDENCE --ta-store FILE [--rv-store FILE]
[--expect-report-data HEX] [--init-data-digest HEX] [--at TIME]``

EVIDENCE is a raw CCA token (CBOR) or the ``{"token": [...]}`` evidence JSON.
Checked: the platform token's signature by the CPAK the trust-anchor store
(trustee's ``tastore.json``) lists for the platform, the realm token's by its
RAK, the RAK binding; the realm challenge with ``--expect-report-data``.
``--at`` is accepted for uniformity (CCA tokens carry no certificates).
Prints the claims as JSON and exits 0; a rejection prints one line and exits
1 (2 for unreadable input or usage errors).
"""

from __future__ import annotations

import argparse
import hmac
from typing import Any

from attestation.cca.errors import CcaVerificationError
from attestation.cca.kbs import CcaVerifier, appraise_platform, appraise_realm, cca_claims
from attestation.cca.token import MAX_TOKEN_SIZE
from attestation.verify_cli import Inputs, Verdict, add_evidence_arguments, run_verify

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify an Arm CCA attestation token."
    parser.add_argument("--ta-store", metavar="FILE", required=True, help="trust anchors (tastore.json)")
    parser.add_argument("--rv-store", metavar="FILE", help="reference values (rvstore.json)")
    add_evidence_arguments(
        parser,
        evidence_help="CBOR token or evidence JSON",
        report_data_help="realm challenge (zero-padded to 64)",
        init_data_help="realm personalization value (padded)",
        at_used=False,
    )


def _load(args: argparse.Namespace, _: Inputs) -> CcaVerifier:
    return CcaVerifier(ta_store=args.ta_store, rv_store=args.rv_store)


def _check(_: argparse.Namespace, inputs: Inputs, verifier: CcaVerifier) -> Verdict:
    raw, rd, init = inputs.evidence, inputs.report_data, inputs.init_data
    doc: Any = raw if raw.lstrip()[:1] == b"{" else {"token": list(raw)}
    token = verifier.verify_evidence(doc)
    if rd is not None and not hmac.compare_digest(rd.ljust(64, b"\x00"), token.realm.challenge):
        raise CcaVerificationError("realm challenge does not match --expect-report-data")
    if init is not None and not hmac.compare_digest(
        init.ljust(64, b"\x00"), token.realm.personalization_value
    ):
        raise CcaVerificationError("realm personalization value does not match --init-data-digest")
    claims = cca_claims(token)
    claims["platform_reference_values"] = appraise_platform(token, verifier.rvs)
    claims["realm_reference_values"] = appraise_realm(token, verifier.rvs)
    return Verdict(claims, "CCA token, platform and realm signatures")


def run(args: argparse.Namespace) -> int:
    return run_verify(args, "cca", limit=8 * MAX_TOKEN_SIZE, load=_load, check=_check)
