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
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from attestation.errors import EvidenceFormatError
from coco_common.cli import add_version, exit_on_closed_pipe

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_NOT_VERIFIED",
    "EXIT_UNCHECKED",
    "EXIT_USAGE",
    "EXIT_VERIFIED",
    "main",
    "not_verified",
    "parse_hex",
    "parse_time",
    "read_input",
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
