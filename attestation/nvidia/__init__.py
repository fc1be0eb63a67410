"""NVIDIA GPU / NVSwitch confidential-computing attestation.

* collection: :class:`attestation.nvidia.attester.NvidiaAttester` (NVML
  behind :class:`attestation.nvidia.nvml.NvmlBackend`);
* parsing: :mod:`attestation.nvidia.spdm`, :mod:`attestation.nvidia.evidence`,
  :mod:`attestation.nvidia.rim`;
* verification: :class:`attestation.nvidia.verifier.NvidiaVerifier` and
  :func:`attestation.nvidia.verifier.verify_device`;
* CLI: ``coco-verify nvidia`` (:mod:`attestation.nvidia.cli`).

Submodules are imported on use so that the AA does not pay for the verifier
and the KBS does not load NVML.
"""

from __future__ import annotations

__all__: list[str] = []
