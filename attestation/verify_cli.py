"""``coco-verify``: verify SNP, TDX, NVIDIA, Azure vTPM, TPM, SGX, CCA and CSV evidence offline.

Each platform's ``attestation.<package>.cli`` provides ``configure(parser)``
and ``run(args) -> int`` (the table in :func:`_subcommands`); this module
dispatches, and owns the one
verdict format and exit-code scheme every platform reports through
(:func:`verified`, :func:`not_verified`, :func:`usage_error`):

- stdout, first line: ``verified: yes <tee> <why>`` or ``verified: no <tee> <why>``;
  on ``yes`` the claims follow as one JSON document;
- stderr: one line ``coco-verify <tee>: ...`` for a rejection, a usage error, or
  (as a WARNING) what was NOT checked;
- exit status: :data:`EXIT_VERIFIED` 0 authentic (what was NOT checked is
  named); :data:`EXIT_NOT_VERIFIED` 1 not authentic, or a check failed;
  :data:`EXIT_USAGE` 2 usage error or unreadable input; with ``--strict``,
  :data:`EXIT_UNCHECKED` 3 authentic, but the TCB status and/or a policy
  was not evaluated (e.g. TDX without collateral, no ``--policy``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from attestation.errors import AttestationError, EvidenceFormatError
from coco_common.cli import add_version, exit_on_closed_pipe

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_NOT_VERIFIED",
    "EXIT_UNCHECKED",
    "EXIT_USAGE",
    "EXIT_VERIFIED",
    "Inputs",
    "Verdict",
    "add_evidence_arguments",
    "dcap_options",
    "main",
    "not_verified",
    "parse_hex",
    "parse_time",
    "read_input",
    "run_verify",
    "usage_error",
    "verified",
]

EXIT_VERIFIED = 0
EXIT_NOT_VERIFIED = 1
EXIT_USAGE = 2
EXIT_UNCHECKED = 3

EXIT_CODES_HELP = (
    "output: first line 'verified: yes|no <tee> <why>' on stdout, then the claims as JSON. "
    "exit status: 0 verified (authentic; anything NOT checked, e.g. no --policy or TCB status "
    "not evaluated, is named in the first line and in a WARNING on stderr); 1 not verified "
    "(not authentic, or a check failed); 2 usage error or unreadable input; 3 (only with "
    "--strict, given before the TEE name) authentic but NOT fully checked"
)

#: set by ``--strict``: authentic but not fully checked evidence exits :data:`EXIT_UNCHECKED`
_strict = False


def verified(
    tee: str, claims: Mapping[str, Any] | Sequence[Any], why: str, *, unchecked: Sequence[str] = ()
) -> int:
    """Report authentic evidence. ``unchecked`` names what was not evaluated
    (``"policy (no --policy)"``); each entry is said loudly on stderr and in the
    verdict line, and with ``--strict`` makes the exit status :data:`EXIT_UNCHECKED`.

    Without ``--strict`` such evidence exits 0, as the command always has (scripts
    that check a signature only rely on it); ``--strict`` is for a caller that must
    know every check ran."""
    line = f"verified: yes {tee} {why}"
    if unchecked:
        line += "; NOT checked: " + ", ".join(unchecked)
        print(f"coco-verify {tee}: WARNING: NOT checked: {', '.join(unchecked)}", file=sys.stderr)
    sys.stdout.write(line + "\n")
    sys.stdout.write(json.dumps(claims, indent=2, sort_keys=isinstance(claims, Mapping)) + "\n")
    sys.stdout.flush()
    return EXIT_UNCHECKED if unchecked and _strict else EXIT_VERIFIED


def not_verified(tee: str, why: str) -> int:
    """Report evidence that is not authentic, or that failed a requested check."""
    print(f"coco-verify {tee}: {why}", file=sys.stderr)
    sys.stdout.write(f"verified: no {tee} {why}\n")
    sys.stdout.flush()
    return EXIT_NOT_VERIFIED


def usage_error(tee: str, why: str) -> int:
    """A usage error or unreadable input: no verdict was reached."""
    print(f"coco-verify {tee}: {why}", file=sys.stderr)
    return EXIT_USAGE


def parse_time(text: str) -> datetime:
    """``--at``: an ISO 8601 time (``Z`` accepted); a naive time is UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise EvidenceFormatError(f"--at {text[:40]!r} is not an ISO 8601 time") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_hex(text: str | None, what: str, limit: int) -> bytes | None:
    """An optional hex argument of at most ``limit`` bytes."""
    if text is None:
        return None
    try:
        out = bytes.fromhex(text)
    except ValueError as exc:
        raise EvidenceFormatError(f"{what} is not hex") from exc
    if len(out) > limit:
        raise EvidenceFormatError(f"{what} is longer than {limit} bytes")
    return out


def read_input(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of an input file (a pipe such as ``<(...)`` too:
    the read stops at ``limit + 1`` bytes); raises OSError as ``open`` does."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise EvidenceFormatError(f"{Path(path).name} is larger than {limit} bytes")
    return data


def add_evidence_arguments(
    parser: argparse.ArgumentParser,
    *,
    evidence_help: str,
    report_data_help: str,
    init_data_help: str | None = None,
    evidence_metavar: str = "EVIDENCE",
    at_used: bool = True,
) -> None:
    """The arguments every :func:`run_verify` subcommand reads: the evidence file,
    ``--at``, ``--expect-report-data`` and (where the TEE binds init-data)
    ``--init-data-digest``. ``at_used=False``: the TEE's evidence carries no
    validity period, ``--at`` is accepted for uniformity and listed last."""
    parser.add_argument("evidence", metavar=evidence_metavar, help=evidence_help)
    if at_used:
        parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument("--expect-report-data", metavar="HEX", help=report_data_help)
    if init_data_help is not None:
        parser.add_argument("--init-data-digest", metavar="HEX", help=init_data_help)
    else:
        parser.set_defaults(init_data_digest=None)
    if not at_used:
        parser.add_argument("--at", metavar="TIME", help="accepted for uniformity; unused")


@dataclass(frozen=True)
class Inputs:
    """What :func:`run_verify` reads before the TEE's own inputs, in this order."""

    now: datetime
    evidence: bytes
    report_data: bytes | None
    init_data: bytes | None


@dataclass(frozen=True)
class Verdict:
    """Authentic evidence: its claims, why it is authentic, and what was NOT
    checked besides the nonce (which :func:`run_verify` names itself)."""

    claims: Mapping[str, Any]
    why: str
    unchecked: Sequence[str] = ()


_T = TypeVar("_T")


def dcap_options(args: argparse.Namespace, _: Inputs) -> dict[str, Any]:
    """A DCAP verifier's options from ``--root-ca`` and ``--collateral`` (the
    ``load`` of the subcommands whose evidence chains to the Intel SGX Root CA)."""
    from attestation.tdx.collateral import Collateral  # only the DCAP subcommands need it
    from attestation.tdx.pck import load_pem_chain

    opts: dict[str, Any] = {}
    if args.root_ca:
        opts["root_ca"] = load_pem_chain(read_input(args.root_ca, 1 << 20), "--root-ca")[0]
    if args.collateral:
        opts["collateral"] = Collateral.from_json(read_input(args.collateral, 16 << 20))
    return opts


def run_verify(
    args: argparse.Namespace,
    tee: str,
    *,
    limit: int,
    load: Callable[[argparse.Namespace, Inputs], _T],
    check: Callable[[argparse.Namespace, Inputs, _T], Verdict],
) -> int:
    """One verify subcommand configured by :func:`add_evidence_arguments`.

    Reads :class:`Inputs` (evidence at most ``limit`` bytes), then ``load`` reads
    the TEE's own inputs; a failure there is a usage error (exit 2). ``check``
    verifies: an :class:`~attestation.errors.EvidenceFormatError` is a usage error,
    any other :class:`~attestation.errors.AttestationError` a rejection (exit 1);
    otherwise the :class:`Verdict` is reported, with the nonce named as NOT
    checked when there is no ``--expect-report-data``."""
    try:
        inputs = Inputs(
            now=parse_time(args.at) if args.at else datetime.now(UTC),
            evidence=read_input(args.evidence, limit),
            report_data=parse_hex(args.expect_report_data, "--expect-report-data", 64),
            init_data=parse_hex(args.init_data_digest, "--init-data-digest", 64),
        )
        loaded = load(args, inputs)
    except OSError as exc:
        return usage_error(tee, f"cannot read input: {exc.strerror or exc}")
    except (AttestationError, ValueError) as exc:
        return usage_error(tee, f"malformed input: {exc}")
    try:
        verdict = check(args, inputs, loaded)
    except EvidenceFormatError as exc:
        return usage_error(tee, f"malformed input: {exc}")
    except AttestationError as exc:
        return not_verified(tee, f"rejected: {exc}")
    unchecked = [] if inputs.report_data is not None else ["nonce (no --expect-report-data)"]
    return verified(tee, verdict.claims, verdict.why, unchecked=[*unchecked, *verdict.unchecked])


def _subcommands() -> dict[str, tuple[str, ModuleType]]:
    """Subcommand -> (what it verifies, its module). Imported here, not at the
    top: each platform's CLI imports this module's verdict functions."""
    from attestation.azure import cli as azure_cli
    from attestation.cca import cli as cca_cli
    from attestation.csv import cli as csv_cli
    from attestation.nvidia import cli as nvidia_cli
    from attestation.sgx import cli as sgx_cli
    from attestation.snp import cli as snp_cli
    from attestation.tdx import cli as tdx_cli
    from attestation.tpm import cli as tpm_cli

    return {
        "snp": ("AMD SEV-SNP attestation report", snp_cli),
        "tdx": ("Intel TDX quote", tdx_cli),
        "nvidia": ("NVIDIA GPU attestation report", nvidia_cli),
        "az-snp-vtpm": ("Azure SEV-SNP vTPM evidence", azure_cli),
        "az-tdx-vtpm": ("Azure TDX vTPM evidence", azure_cli),
        "tpm": ("TPM 2.0 quote", tpm_cli),
        "sgx": ("Intel SGX DCAP quote", sgx_cli),
        "cca": ("Arm CCA attestation token", cca_cli),
        "csv": ("Hygon CSV attestation report", csv_cli),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coco-verify", description=__doc__.splitlines()[0], epilog=EXIT_CODES_HELP
    )
    add_version(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 (not 0) when the evidence is authentic but something was NOT checked",
    )
    sub = parser.add_subparsers(dest="platform", required=True)
    for name, (help_text, mod) in _subcommands().items():
        p = sub.add_parser(name, help=f"verify an {help_text}", epilog=EXIT_CODES_HELP)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    global _strict
    _strict = args.strict
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        rc = run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `coco-verify ... | head`
        exit_on_closed_pipe()
    return rc


if __name__ == "__main__":
    sys.exit(main())
