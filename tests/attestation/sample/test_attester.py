"""The sample and sampledevice attesters produce the protocol's dev evidence."""

from __future__ import annotations

import base64

import pytest

from attestation.attester import Attester, DeviceAttester
from attestation.errors import UnsupportedPlatform
from attestation.sample import SampleAttester, SampleDeviceAttester, sample_device_enabled


async def test_sample_evidence_is_unpadded_base64_of_report_data() -> None:
    att = SampleAttester()
    assert isinstance(att, Attester)
    assert att.tee == "sample"
    digest = bytes(range(48))
    ev = await att.get_evidence(digest)
    assert ev == {"svn": "1", "report_data": base64.b64encode(digest).decode()}
    assert base64.b64decode(ev["report_data"]) == digest  # not padded to 64


async def test_sample_known_answer_from_reference() -> None:
    # kbs-protocol.md §3 case 1: SHA-384 digest -> sample report_data
    digest = bytes.fromhex(
        "a21ac82c047c1d76ff1e481382c975da145f89f17bc95731b9299cd0aa3d5bb69e564fdd554b279d9ba56d19789ddf1c"
    )
    ev = await SampleAttester().get_evidence(digest)
    assert ev["report_data"] == "ohrILAR8HXb/HkgTgsl12hRfifF7yVcxuSmc0Ko9W7aeVk/dVUsnnZulbRl4nd8c"


async def test_sample_cannot_bind_init_data() -> None:
    with pytest.raises(UnsupportedPlatform):
        await SampleAttester().bind_init_data(b"\x00" * 48)


async def test_sampledevice_evidence() -> None:
    dev = SampleDeviceAttester()
    assert isinstance(dev, DeviceAttester)
    assert dev.tee == "sampledevice"
    ev = await dev.get_evidence(b"\x07" * 48)
    assert ev == {"svn": "2", "report_data": base64.b64encode(b"\x07" * 48).decode()}
    await dev.on_attestation_accepted()


def test_sample_device_switch() -> None:
    assert sample_device_enabled({"ENABLE_SAMPLE_DEVICE": "1"})
    assert sample_device_enabled({"ENABLE_SAMPLE_DEVICE": ""})
    assert not sample_device_enabled({})
