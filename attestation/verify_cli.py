"""``coco-verify``: verify SNP, TDX, NVIDIA, Azure vTPM, TPM, SGX, CCA and CSV evidence offline.

Each platform module provides ``configure(parser)`` and ``run(args) -> int``
in ``attestation.<platform>.cli`` (or the module named in ``_MODULES``); this
module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

_PLATFORMS = {
    "snp": "AMD SEV-SNP attestation report",
    "tdx": "Intel TDX quote",
    "nvidia": "NVIDIA GPU attestation report",
    "az-snp-vtpm": "Azure SEV-SNP vTPM evidence",
    "az-tdx-vtpm": "Azure TDX vTPM evidence",
    "tpm": "TPM 2.0 quote",
    "sgx": "Intel SGX DCAP quote",
    "cca": "Arm CCA attestation token",
    "csv": "Hygon CSV attestation report",
}
#: subcommands whose module is not ``attestation.<name>.cli``
_MODULES = {"az-snp-vtpm": "attestation.azure.cli", "az-tdx-vtpm": "attestation.azure.cli"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coco-verify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="platform", required=True)
    for name, help_text in _PLATFORMS.items():
        p = sub.add_parser(name, help=f"verify an {help_text}")
        try:
            mod = importlib.import_module(_MODULES.get(name, f"attestation.{name}.cli"))
        except ImportError:
            p.set_defaults(_run=None)
            continue
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    if args._run is None:
        print(f"coco-verify: {args.platform} verification is not available in this build", file=sys.stderr)
        return 2
    rc: int = args._run(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
