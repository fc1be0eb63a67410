"""``coco-verify tdx QUOTE``: verify a TDX quote offline and print its claims.

QUOTE is a raw quote file or trustee-shaped evidence JSON
(``{"cc_eventlog": ..., "quote": ...}``). Authenticity is always checked
(signatures, PCK chain to the Intel SGX Root CA, validity at ``--at``, default
now); the TCB status needs ``--collateral`` (dcap-qvl collateral JSON) or
``--pccs-url``; policy checks only run with ``--policy``. Reports through the
one coco-verify verdict scheme (:mod:`attestation.verify_cli`): 0 verified with
TCB status and policy checked, 1 rejected, 2 usage error or unreadable input,
3 authentic but the TCB status (no collateral) or a policy was not checked.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from attestation.errors import AttestationError, EvidenceFormatError, PolicyViolation
from attestation.eventlog.tcg import parse_event_log
from attestation.tdx.collateral import Collateral
from attestation.tdx.endorsements import CollateralCache, PccsClient, collateral_for
from attestation.tdx.errors import UnknownQuoteFormat
from attestation.tdx.evidence import TdxEvidence
from attestation.tdx.kbs import quote_claims
from attestation.tdx.pck import intel_sgx_root_ca
from attestation.tdx.policy import TdxPolicy
from attestation.tdx.quote import MAX_QUOTE_SIZE
from attestation.tdx.verify import verify_quote
from attestation.verify_cli import not_verified, parse_time, read_input, usage_error, verified

__all__ = ["configure", "run"]

_MAX_FILE = 16 * 1024 * 1024


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("quote", metavar="QUOTE", help="raw quote file, or evidence JSON")
    parser.add_argument("--collateral", metavar="FILE", help="collateral JSON (dcap-qvl QuoteCollateralV3)")
    parser.add_argument("--pccs-url", metavar="URL", help="fetch collateral from this PCS/PCCS (v4 API)")
    parser.add_argument("--cache-dir", metavar="DIR", help="collateral cache directory for --pccs-url")
    parser.add_argument("--eventlog", metavar="FILE", help="CCEL event log (raw); replayed against RTMRs")
    parser.add_argument("--at", metavar="TIME", help="verify as of this RFC 3339 time (default now)")
    parser.add_argument("--expect-report-data", metavar="HEX", help="REPORTDATA (zero-padded to 64 bytes)")
    parser.add_argument("--policy", metavar="FILE", help="appraisal policy JSON (see attestation.tdx.policy)")


class _Usage(Exception):
    """Unreadable input or a bad argument: exit 2, no verdict."""


def _read(path: str, what: str) -> bytes:
    try:
        return read_input(path, _MAX_FILE)
    except EvidenceFormatError as exc:  # over the limit
        raise _Usage(f"{what} file {exc}") from exc
    except OSError as exc:
        raise _Usage(f"cannot read {what} {path}: {(exc.strerror or str(exc)).lower()}") from exc


def _collateral(data: bytes) -> Collateral:
    try:
        return Collateral.from_json(data)
    except AttestationError as exc:
        if b'"tcbInfo"' in data or b'"enclaveIdentity"' in data:
            raise _Usage(
                "--collateral holds a PCS tcbInfo/enclaveIdentity body; it wants the whole "
                "dcap-qvl QuoteCollateralV3 JSON (or use --pccs-url)"
            ) from exc
        raise


def _verify(args: argparse.Namespace) -> dict[str, object]:
    try:
        now = parse_time(args.at) if args.at else datetime.now(UTC)
    except EvidenceFormatError as exc:
        raise _Usage(str(exc)) from exc
    raw = _read(args.quote, "quote")
    eventlog_bytes: bytes | None = _read(args.eventlog, "event log") if args.eventlog else None
    if raw.lstrip()[:1] == b"{":
        evidence = TdxEvidence.from_json(raw)
        raw = evidence.quote
        if eventlog_bytes is None:
            eventlog_bytes = evidence.cc_eventlog
    if len(raw) > MAX_QUOTE_SIZE:
        raise AttestationError("quote file too large")
    collateral = None
    if args.collateral:
        collateral = _collateral(_read(args.collateral, "collateral"))
    elif args.pccs_url:
        cache = CollateralCache(args.cache_dir) if args.cache_dir else None
        collateral = collateral_for(PccsClient(args.pccs_url, cache=cache), raw, now=now)
    verified = verify_quote(raw, root_ca=intel_sgx_root_ca(), now=now, collateral=collateral)
    body = verified.quote.td_body
    if args.expect_report_data is not None:
        try:
            want = bytes.fromhex(args.expect_report_data.removeprefix("0x"))
        except ValueError as exc:
            raise _Usage("--expect-report-data is not hex") from exc
        if len(want) > 64 or want.ljust(64, b"\x00") != body.report_data:
            raise AttestationError("REPORTDATA does not match --expect-report-data")
    el = None
    if eventlog_bytes is not None:
        el = parse_event_log(eventlog_bytes)
        el.check_registers({i + 1: body.rtmrs[i] for i in range(4)})
    claims = quote_claims(verified, el)
    if args.policy:
        try:
            policy = TdxPolicy.from_json(_read(args.policy, "policy"))
        except EvidenceFormatError as exc:
            raise _Usage(f"--policy {args.policy}: {exc}") from exc
        policy.check(claims)
    claims["verified_at"] = now.isoformat()  # the time the chain and TCB were judged at
    return claims


def _why(claims: dict[str, object], args: argparse.Namespace) -> tuple[str, list[str]]:
    why = f"v{claims.get('version')} quote, PCK chain to the Intel SGX Root CA"
    unchecked = []
    if claims.get("tcb_status") is None:
        unchecked.append("TCB status (no --collateral/--pccs-url)")
    else:
        why += f", TCB status {claims.get('tcb_status')}"
    if args.policy:
        why += "; policy: checked"
    else:
        unchecked.append("policy (no --policy)")
    return why, unchecked


def run(args: argparse.Namespace) -> int:
    try:
        claims = _verify(args)
    except _Usage as exc:
        return usage_error("tdx", str(exc))
    except PolicyViolation as exc:
        return not_verified("tdx", f"policy violation: {exc}")
    except UnknownQuoteFormat as exc:
        return not_verified("tdx", f"not a TDX quote ({exc})")
    except (AttestationError, ValueError) as exc:
        return not_verified("tdx", str(exc))
    why, unchecked = _why(claims, args)
    return verified("tdx", claims, why, unchecked=unchecked)
