"""The contract every platform attester (collection side) fulfils.

An attester gathers evidence inside the guest. ``sample`` is the fallback on
machines without TEE hardware; ``snp``, ``tdx`` are primary TEEs; ``nvidia``
is an additional device attester. Evidence is a JSON value exactly as
trustee's verifier for that TEE deserializes it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Attester", "DeviceAttester"]


@runtime_checkable
class Attester(Protocol):
    """A primary TEE attester."""

    #: kbs-types name of the TEE: "sample", "snp", "tdx", ...
    tee: str

    async def get_evidence(self, report_data: bytes) -> Any:
        """Evidence binding ``report_data`` (at most 64 bytes; platforms
        zero-pad). Raises :class:`attestation.errors.AttestationError`."""
        ...

    async def bind_init_data(self, digest: bytes) -> None:
        """Check the platform's init-data field (SNP HOSTDATA, TDX MRCONFIGID)
        against ``digest``. Raises :class:`~attestation.errors.UnsupportedPlatform`
        where the platform has no such field, and
        :class:`~attestation.errors.VerificationError` on a mismatch."""
        ...


@runtime_checkable
class DeviceAttester(Protocol):
    """An additional-device attester (e.g. NVIDIA GPUs)."""

    tee: str

    async def get_evidence(self, report_data: bytes) -> Any:
        """Evidence for all devices of this kind; devices use the first 32
        bytes of ``report_data`` as their nonce."""
        ...

    async def on_attestation_accepted(self) -> None:
        """Called after the KBS accepted the composite evidence (NVIDIA: set
        the GPUs' ready state when configured to)."""
        ...
