"""Expected SNP launch measurements and KBS reference values.

The launch digest is computed with virtee's ``sev-snp-measure`` (PyPI
``sev-snp-measure``, virtee/sev-snp-measure ``sevsnpmeasure/guest.py``; the digest chain is
the PAGE_INFO hash of SNP_LAUNCH_UPDATE in the AMD SEV-SNP Firmware ABI Specification,
pub. 56860, table "PAGE_INFO Structure"). This module wraps it with typed
inputs and turns digests into reference values the KBS understands:

* :func:`reference_values` — ``{"snp_launch_measurement": [<lowercase hex>, ...]}``,
  hex because the SNP claim ``measurement`` is lowercase hex (current trustee;
  releases before its Turin support used standard base64) and the default CPU
  policy tests ``input.snp.measurement in
  query_reference_value("snp_launch_measurement")``;
* :func:`reference_value_message` — the RVPS ``sample`` message
  (``{"version": "0.1.0", "type": "sample", "payload": <b64 JSON>}``) that
  ``POST /kbs/v0/reference-value`` (and ``kbs-client set-sample-reference-value``)
  accepts.

Run ``python -m attestation.snp.measure --ovmf OVMF.fd [--vcpus N] ...`` to
print the digest and the reference-value message.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.snp.errors import SnpFormatError

__all__ = [
    "LaunchConfig",
    "launch_digest",
    "main",
    "ovmf_hash",
    "reference_value_message",
    "reference_values",
]

_VMM = {"qemu": "QEMU", "ec2": "ec2", "gce": "gce"}


@dataclass(frozen=True)
class LaunchConfig:
    """What determines an SNP guest's launch digest (the QEMU/Kata VM shape).

    ``vcpu_sig`` overrides ``vcpu_type`` (a QEMU CPU model such as ``EPYC-v4``
    or ``EPYC-Milan``). ``guest_features`` is SEV_FEATURES (0x21 since Linux
    6.6 / QEMU defaults; 0x1 before). ``ovmf_hash`` seeds the digest with a
    precomputed hash of the OVMF image (the image is still needed for its
    metadata).
    """

    ovmf: Path
    vcpus: int = 1
    vcpu_type: str = "EPYC-v4"
    vcpu_sig: int | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    guest_features: int = 0x21
    vmm: str = "qemu"
    ovmf_hash: bytes | None = None


def _sevsnpmeasure() -> Any:
    """sev-snp-measure (a declared dependency), imported on first use: only
    ``measure`` needs it, not the verifier or the guest."""
    from sevsnpmeasure import guest, vcpu_types, vmm_types
    from sevsnpmeasure.sev_mode import SevMode

    return guest, vcpu_types, vmm_types, SevMode


def launch_digest(cfg: LaunchConfig) -> bytes:
    """The 48-byte MEASUREMENT an SNP guest launched with ``cfg`` reports."""
    guest, vcpu_types, vmm_types, sev_mode = _sevsnpmeasure()
    if cfg.vcpus < 1:
        raise SnpFormatError("vcpus must be at least 1")
    if cfg.vmm not in _VMM:
        raise SnpFormatError(f"vmm must be one of {sorted(_VMM)}")
    if cfg.vcpu_sig is not None:
        sig = cfg.vcpu_sig
    elif cfg.vcpu_type in vcpu_types.CPU_SIGS:
        sig = vcpu_types.CPU_SIGS[cfg.vcpu_type]
    else:
        raise SnpFormatError(f"unknown vCPU type {cfg.vcpu_type!r}")
    if cfg.kernel is None and (cfg.initrd is not None or cfg.append is not None):
        raise SnpFormatError("initrd/append need a kernel")
    try:
        ld = guest.calc_launch_digest(
            sev_mode.SEV_SNP,
            cfg.vcpus,
            sig,
            str(cfg.ovmf),
            str(cfg.kernel) if cfg.kernel else None,
            str(cfg.initrd) if cfg.initrd else None,
            cfg.append if cfg.append is not None else "",
            cfg.guest_features,
            cfg.ovmf_hash.hex() if cfg.ovmf_hash else "",
            vmm_types.VMMType[_VMM[cfg.vmm]],
        )
    except (RuntimeError, ValueError, OSError, AssertionError) as exc:
        raise SnpFormatError(f"cannot compute the launch digest: {exc}") from exc
    digest = bytes(ld)
    if len(digest) != 48:
        raise SnpFormatError("sev-snp-measure returned a digest that is not 48 bytes")
    return digest


def ovmf_hash(ovmf: Path) -> bytes:
    """The launch digest after the OVMF pages only (``snp:ovmf-hash``)."""
    guest = _sevsnpmeasure()[0]
    try:
        return bytes(guest.calc_snp_ovmf_hash(str(ovmf)))
    except (RuntimeError, ValueError, OSError) as exc:
        raise SnpFormatError(f"cannot hash the OVMF image: {exc}") from exc


def reference_values(
    measurements: Iterable[bytes], *, name: str = "snp_launch_measurement"
) -> dict[str, list[str]]:
    """``{name: [lowercase hex of each 48-byte measurement]}`` (the claim encoding)."""
    out: list[str] = []
    for m in measurements:
        if len(m) != 48:
            raise SnpFormatError("an SNP launch measurement is 48 bytes")
        text = m.hex()
        if text not in out:
            out.append(text)
    if not out:
        raise SnpFormatError("no measurements given")
    return {name: out}


def reference_value_message(values: dict[str, Any]) -> dict[str, str]:
    """The RVPS ``sample`` registration message for ``values``."""
    payload = base64.b64encode(json.dumps(values, sort_keys=True).encode()).decode()
    return {"version": "0.1.0", "type": "sample", "payload": payload}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attestation.snp.measure", description=__doc__.splitlines()[0])
    p.add_argument("--ovmf", required=True, type=Path)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--vcpu-type", default="EPYC-v4")
    p.add_argument("--vcpu-sig", type=lambda s: int(s, 0))
    p.add_argument("--kernel", type=Path)
    p.add_argument("--initrd", type=Path)
    p.add_argument("--append")
    p.add_argument("--guest-features", type=lambda s: int(s, 0), default=0x21)
    p.add_argument("--vmm", choices=sorted(_VMM), default="qemu")
    a = p.parse_args(argv)
    try:
        digest = launch_digest(
            LaunchConfig(
                a.ovmf,
                a.vcpus,
                a.vcpu_type,
                a.vcpu_sig,
                a.kernel,
                a.initrd,
                a.append,
                a.guest_features,
                a.vmm,
            )
        )
    except SnpFormatError as exc:
        print(f"snp-measure: {exc}", file=sys.stderr)
        return 1
    values = reference_values([digest])
    print(
        json.dumps({"measurement": digest.hex(), "reference_value_message": reference_value_message(values)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
