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
    parser.description = "Verify an Arm CCA attestation token."
    parser.add_argument("evidence", metavar="EVIDENCE", help="CBOR token or evidence JSON")
    parser.add_argument("--ta-store", metavar="FILE", required=True, help="trust anchors (tastore.json)")
    parser.add_argument("--rv-store", metavar="FILE", help="reference values (rvstore.json)")
    parser.add_argument("--expect-report-data", metavar="HEX", help="realm challenge (zero-padded to 64)")
    parser.add_argument("--init-data-digest", metavar="HEX", help="realm personalization value (padded)")
    parser.add_argument("--at", metavar="TIME", help="accepted for uniformity; unused")


def run(args: argparse.Namespace) -> int:
    try:
        if args.at:
            parse_time(args.at)
        raw = read_input(args.evidence, 8 * MAX_TOKEN_SIZE)
        doc: Any = raw if raw.lstrip()[:1] == b"{" else {"token": list(raw)}
        rd = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        init = parse_hex(args.init_data_digest, "--init-data-digest", 64)
        verifier = CcaVerifier(ta_store=args.ta_store, rv_store=args.rv_store)
    except OSError as exc:
        return usage_error("cca", f"cannot read input: {exc.strerror or exc}")
    except (AttestationError, ValueError) as exc:
        return usage_error("cca", f"malformed input: {exc}")
    try:
        token = verifier.verify_evidence(doc)
        if rd is not None and not hmac.compare_digest(rd.ljust(64, b"\x00"), token.realm.challenge):
            raise CcaVerificationError("realm challenge does not match --expect-report-data")
        if init is not None and not hmac.compare_digest(
            init.ljust(64, b"\x00"), token.realm.personalization_value
        ):
            raise CcaVerificationError("realm personalization value does not match --init-data-digest")
    except EvidenceFormatError as exc:
        return usage_error("cca", f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified("cca", f"rejected: {exc}")
    claims = cca_claims(token)
    claims["platform_reference_values"] = appraise_platform(token, verifier.rvs)
    claims["realm_reference_values"] = appraise_realm(token, verifier.rvs)
    unchecked = [] if rd is not None else ["nonce (no --expect-report-data)"]
    return report_verified("cca", claims, "CCA token, platform and realm signatures", unchecked=unchecked)
