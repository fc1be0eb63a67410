"""Sample attesters: evidence is the runtime data in base64, with no signature
(:mod:`attestation.sample.evidence`).

* ``sample`` (primary): ``{"svn": "1", "report_data": "<std base64 of the runtime data>"}``
* ``sampledevice`` (additional device, enabled by the ``ENABLE_SAMPLE_DEVICE``
  environment variable): ``{"svn": "2", "report_data": "<std base64>"}``

The report data is encoded exactly as given (not padded, not hashed), which is
what trustee's sample verifier compares byte for byte.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from attestation.sample.errors import SampleUnsupported
from attestation.sample.evidence import SampleEvidence

__all__ = ["SAMPLE_DEVICE_ENV", "SampleAttester", "SampleDeviceAttester", "sample_device_enabled"]

log = logging.getLogger(__name__)

#: Environment variable that turns the ``sampledevice`` attester on (any value).
SAMPLE_DEVICE_ENV = "ENABLE_SAMPLE_DEVICE"


def sample_device_enabled(env: Mapping[str, str] | None = None) -> bool:
    """True when ``ENABLE_SAMPLE_DEVICE`` is set (to anything, as upstream checks)."""
    return SAMPLE_DEVICE_ENV in (os.environ if env is None else env)


class SampleAttester:
    """The fallback primary attester (tee ``sample``)."""

    tee = "sample"

    async def get_evidence(self, report_data: bytes) -> Any:
        return SampleEvidence.of("1", bytes(report_data)).to_json()

    async def bind_init_data(self, digest: bytes) -> None:
        raise SampleUnsupported("the sample attester has no init-data field to bind")


class SampleDeviceAttester:
    """The test-only additional device (tee ``sampledevice``)."""

    tee = "sampledevice"

    async def get_evidence(self, report_data: bytes) -> Any:
        return SampleEvidence.of("2", bytes(report_data)).to_json()

    async def on_attestation_accepted(self) -> None:
        log.debug("sampledevice: attestation accepted (nothing to do)")
