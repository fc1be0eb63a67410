"""The ``sample`` development attester (no TEE hardware) and the
``sampledevice`` additional-device attester, with their KBS-side verifiers
(:mod:`attestation.sample.kbs`) and evidence envelope
(:mod:`attestation.sample.evidence`).

Neither proves anything: they exist so the whole stack (AA, KBS handshake,
CDH) can run on a machine without confidential-computing hardware, exactly as
upstream's ``sample`` attester does on ``kata-qemu-coco-dev``.
"""

from __future__ import annotations

from attestation.sample.attester import (
    SAMPLE_DEVICE_ENV,
    SampleAttester,
    SampleDeviceAttester,
    sample_device_enabled,
)

__all__ = ["SAMPLE_DEVICE_ENV", "SampleAttester", "SampleDeviceAttester", "sample_device_enabled"]
