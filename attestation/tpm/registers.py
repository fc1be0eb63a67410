"""TPM PCRs as the Attestation Agent's runtime-measurement registers
(:class:`attestation.eventlog.MeasurementRegister`): SHA-256 bank, PCR
index = register index (guest-components' ``pcr_to_ccmr`` for ``tpm`` and
the Azure vTPM TEEs is the identity)."""

from __future__ import annotations

from attestation.tpm.attester import detect_tpm_device
from attestation.tpm.device import DEFAULT_DEVICE, open_tpm
from attestation.tpm.structures import ALG_SHA256

__all__ = ["TpmPcrRegisters"]


class TpmPcrRegisters:
    hash_algorithm = "sha256"

    def __init__(self, device: str | None = None) -> None:
        self.device = device or detect_tpm_device() or DEFAULT_DEVICE

    def pcr_to_ccmr(self, pcr: int) -> int:
        if not 0 <= pcr < 24:
            raise ValueError(f"PCR index {pcr} out of range")
        return pcr

    def read(self, pcr: int) -> bytes:
        with open_tpm(self.device) as tpm:
            return tpm.pcr_read(ALG_SHA256, (self.pcr_to_ccmr(pcr),))[pcr]

    def extend(self, pcr: int, digest: bytes) -> None:
        if len(digest) != 32:
            raise ValueError("a SHA-256 PCR extend needs a 32-byte digest")
        with open_tpm(self.device) as tpm:
            tpm.pcr_extend(self.pcr_to_ccmr(pcr), digest)
