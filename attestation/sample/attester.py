"""Sample attesters: evidence is the runtime data in base64, with no signature.

* ``sample`` (primary): ``{"svn": "1", "report_data": "<std base64 of the runtime data>"}``
* ``sampledevice`` (additional device, enabled by the ``ENABLE_SAMPLE_DEVICE``
  environment variable): ``{"svn": "2", "report_data": "<std base64>"}``

The report data is encoded exactly as given (not padded, not hashed), which is
what trustee's sample verifier compares byte for byte.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from typing import Any

from attestation.errors import UnsupportedPlatform

__all__ = ["SAMPLE_DEVICE_ENV", "SampleAttester", "SampleDeviceAttester", "sample_device_enabled"]

log = logging.getLogger(__name__)

#: Environment variable that turns the ``sampledevice`` attester on (any value).
SAMPLE_DEVICE_ENV = "ENABLE_SAMPLE_DEVICE"


def _sample_evidence(svn: str, report_data: bytes) -> dict[str, str]:
    """trustee's sample evidence: the SVN and the report data, standard base64, no signature."""
    return {"svn": svn, "report_data": base64.b64encode(report_data).decode("ascii")}


def sample_device_enabled(env: Mapping[str, str] | None = None) -> bool:
    """True when ``ENABLE_SAMPLE_DEVICE`` is set (to anything, as upstream checks)."""
    return SAMPLE_DEVICE_ENV in (os.environ if env is None else env)


class SampleAttester:
    """The fallback primary attester (tee ``sample``)."""

    tee = "sample"

    async def get_evidence(self, report_data: bytes) -> Any:
        return _sample_evidence("1", bytes(report_data))

    async def bind_init_data(self, digest: bytes) -> None:
        raise UnsupportedPlatform("the sample attester has no init-data field to bind")


class SampleDeviceAttester:
    """The test-only additional device (tee ``sampledevice``)."""

    tee = "sampledevice"

    async def get_evidence(self, report_data: bytes) -> Any:
        return _sample_evidence("2", bytes(report_data))

    async def on_attestation_accepted(self) -> None:
        log.debug("sampledevice: attestation accepted (nothing to do)")
