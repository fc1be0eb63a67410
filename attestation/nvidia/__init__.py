"""NVIDIA GPU / NVSwitch confidential-computing attestation.

* parsing: :mod:`~attestation.nvidia.spdm` (the SPDM report),
  :mod:`~attestation.nvidia.evidence` (the evidence envelope),
  :mod:`~attestation.nvidia.rim` (RIM documents), :mod:`~attestation.nvidia.certs`,
  :mod:`~attestation.nvidia.ocsp` (OCSP request/answer);
* collection: :class:`attestation.nvidia.attester.NvidiaAttester` over NVML
  (:mod:`~attestation.nvidia.device`, :class:`~attestation.nvidia.device.NvmlBackend`);
* endorsements: :mod:`~attestation.nvidia.endorsements` (RIM files, NVIDIA's RIM
  service, OCSP over HTTP);
* verification: :func:`attestation.nvidia.verify.verify_device` (returns
  :class:`~attestation.nvidia.verify.VerifiedDevice`),
  :mod:`~attestation.nvidia.policy` (appraisal of verified devices);
* the KBS adapter: :class:`attestation.nvidia.kbs.NvidiaVerifier`;
* errors: :mod:`~attestation.nvidia.errors`;
* CLI: ``coco-verify nvidia`` (:mod:`attestation.nvidia.cli`).

Submodules are imported on use so that the AA does not pay for the verifier
and the KBS does not load NVML.
"""

from __future__ import annotations

__all__: list[str] = []
