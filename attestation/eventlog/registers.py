"""Runtime measurement registers behind one small Protocol.

Registers are addressed by TPM-style PCR index, as the AA API
(``ExtendRuntimeMeasurement.RegisterIndex``) does; each backend maps a PCR to
its CC measurement register (CC MR) with :meth:`pcr_to_ccmr`.

* TDX RTMRs: :class:`attestation.tdx.registers.TdxRtmrRegisters`; TPM PCRs:
  :class:`attestation.tpm.registers.TpmPcrRegisters` (each TEE's backend lives
  with its TEE and uses the mapping here).
* :class:`SoftwareRegisters`: file-backed registers for the sample platform and
  development; same PCR mapping and hash as TDX, so logs replay the same way.
  Not a security boundary (anyone who can write the files can forge values).
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from attestation.eventlog.errors import EventLogError
from coco_common.files import write_atomic

__all__ = [
    "HASH_ALGORITHMS",
    "MeasurementRegister",
    "SoftwareRegisters",
    "tdx_pcr_to_ccmr",
]

#: kbs-types hash name -> (TCG algorithm id, digest size)
HASH_ALGORITHMS: dict[str, tuple[int, int]] = {
    "sha256": (0x0B, 32),
    "sha384": (0x0C, 48),
    "sha512": (0x0D, 64),
}


def tdx_pcr_to_ccmr(pcr: int) -> int:
    """TD-shim / UEFI CC mapping: PCR 1,7 -> MR1; 2..6 -> MR2; 8..15 -> MR3; else MR4.
    RTMR index = MR - 1 (so the AA's default PCR 17 lands in RTMR3)."""
    if pcr < 0:
        raise ValueError("register index must be non-negative")
    if pcr in (1, 7):
        return 1
    if 2 <= pcr <= 6:
        return 2
    if 8 <= pcr <= 15:
        return 3
    return 4


@runtime_checkable
class MeasurementRegister(Protocol):
    #: kbs-types hash name of the register bank: "sha384" for TDX
    hash_algorithm: str

    def pcr_to_ccmr(self, pcr: int) -> int: ...

    def read(self, pcr: int) -> bytes:
        """Current value of the register that ``pcr`` maps to."""
        ...

    def extend(self, pcr: int, digest: bytes) -> None:
        """Extend the register that ``pcr`` maps to with ``digest``."""
        ...


class SoftwareRegisters:
    """File-backed CC MRs 1..4 (``<dir>/ccmr<N>``), TDX mapping, extend = H(old || digest)."""

    def __init__(self, directory: str | Path, *, hash_algorithm: str = "sha384") -> None:
        if hash_algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"unsupported hash algorithm {hash_algorithm}")
        self.hash_algorithm = hash_algorithm
        self._dir = Path(directory)
        self._size = HASH_ALGORITHMS[hash_algorithm][1]

    def pcr_to_ccmr(self, pcr: int) -> int:
        return tdx_pcr_to_ccmr(pcr)

    def _path(self, pcr: int) -> Path:
        return self._dir / f"ccmr{self.pcr_to_ccmr(pcr)}"

    def read(self, pcr: int) -> bytes:
        try:
            with open(self._path(pcr), "rb") as f:
                value = f.read(self._size + 1)
        except FileNotFoundError:
            return bytes(self._size)
        if len(value) != self._size:
            raise EventLogError(f"software register file {self._path(pcr).name} is corrupt")
        return value

    def extend(self, pcr: int, digest: bytes) -> None:
        if len(digest) > self._size:
            raise ValueError(f"extend data is at most {self._size} bytes")
        self._dir.mkdir(parents=True, exist_ok=True)
        with open(self._dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            new = hashlib.new(
                self.hash_algorithm, self.read(pcr) + digest.ljust(self._size, b"\x00")
            ).digest()
            write_atomic(self._path(pcr), new, mode=0o644)
