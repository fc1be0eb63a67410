"""NvidiaAttester collection through the fake NVML layer (no GPU here)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from attestation.attester import DeviceAttester
from attestation.errors import AttestationError, UnsupportedPlatform
from attestation.nvidia.attester import NvidiaAttester, ReadyState
from attestation.nvidia.device import PynvmlBackend
from attestation.nvidia.errors import CcModeDisabled
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.nvidia.verify import TrustAnchors

from .fakegpu import ARCH_AMPERE, FakeDevice, FakeNvml, TestGpu, recorded_device
from .vectors import NONCE_931, NOW, read, report_bytes


def recorded_hopper() -> FakeDevice:
    return recorded_device(
        report_bytes("nvtrust/hopperAttestationReport.txt"),
        read("nvtrust/hopperCertChain.txt"),
        uuid="GPU-aaaa",
    )


def test_detect_without_nvml_is_none() -> None:
    fake = FakeNvml(library_present=False)
    assert NvidiaAttester.detect(fake) is None


def test_detect_without_gpus_is_none_and_shuts_down() -> None:
    fake = FakeNvml(devices=[])
    assert NvidiaAttester.detect(fake) is None
    assert ("shutdown", None) in fake.calls


def test_detect_with_cc_off_is_a_clear_error() -> None:
    fake = FakeNvml(devices=[recorded_hopper()], cc_on=False)
    with pytest.raises(CcModeDisabled, match="confidential computing is off"):
        NvidiaAttester.detect(fake)
    assert issubclass(CcModeDisabled, UnsupportedPlatform)


def test_detect_with_driver_lacking_cc_support() -> None:
    fake = FakeNvml(devices=[recorded_hopper()], cc_supported=False)
    with pytest.raises(CcModeDisabled, match="cannot report the confidential-computing state"):
        NvidiaAttester.detect(fake)


def test_detect_on_this_machine_says_no_device() -> None:
    """The real pynvml backend on a machine without an NVIDIA driver."""
    assert NvidiaAttester.detect(PynvmlBackend()) is None


def test_detect_finds_cc_gpus() -> None:
    att = NvidiaAttester.detect(FakeNvml(devices=[recorded_hopper()]))
    assert att is not None and att.tee == "nvidia"
    assert isinstance(att, DeviceAttester)


async def test_recorded_evidence_collected_and_verified(anchors: TrustAnchors) -> None:
    fake = FakeNvml(devices=[recorded_hopper()])
    att = NvidiaAttester(fake)
    report_data = NONCE_931 + b"\x01" * 16  # 48-byte digest; the GPU gets its first 32 bytes
    ev = await att.get_evidence(report_data)
    assert ("report", NONCE_931) in fake.calls
    (item,) = ev["device_evidence_list"]
    assert set(item) == {"arch", "uuid", "evidence", "certificate"}
    assert item["arch"] == "HOPPER" and item["uuid"] == "GPU-aaaa"
    assert base64.b64decode(item["evidence"]) == report_bytes("nvtrust/hopperAttestationReport.txt")
    assert base64.b64decode(item["certificate"]) == read("nvtrust/hopperCertChain.txt")
    claims = NvidiaVerifier(anchors=anchors).verify(
        ev, expected_report_data=report_data, expected_init_data_hash=None, now=NOW
    )
    assert claims["devices"][0]["driver_version"] == "550.90.07"


async def test_stale_recorded_report_is_refused_by_the_attester() -> None:
    """A device that signs another nonce than asked is an error, not evidence."""
    att = NvidiaAttester(FakeNvml(devices=[recorded_hopper()]))
    with pytest.raises(AttestationError, match="different nonce"):
        await att.get_evidence(b"\x05" * 48)


async def test_short_report_data_is_zero_padded() -> None:
    gpu = TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt"))
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-t", gpu.report, gpu.chain_pem)])
    await NvidiaAttester(fake).get_evidence(b"\x07" * 20)
    assert ("report", b"\x07" * 20 + b"\0" * 12) in fake.calls


async def test_multi_gpu_with_test_identity() -> None:
    gpus = [TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt")) for _ in range(2)]
    fake = FakeNvml(devices=[FakeDevice(9, f"GPU-{i}", g.report, g.chain_pem) for i, g in enumerate(gpus)])
    ev = await NvidiaAttester(fake).get_evidence(b"\x42" * 48)
    assert [d["uuid"] for d in ev["device_evidence_list"]] == ["GPU-0", "GPU-1"]
    # each device verifies against its own test root
    for g, d in zip(gpus, ev["device_evidence_list"], strict=True):
        v = NvidiaVerifier(anchors=TrustAnchors(device_root=g.root, rim_root=g.root))
        single = {"device_evidence_list": [d]}
        out = v.verify(
            single, expected_report_data=b"\x42" * 48, expected_init_data_hash=None, now=datetime.now(UTC)
        )
        assert out["devices"][0]["fwid_checked"] is True


async def test_unsupported_architecture() -> None:
    fake = FakeNvml(devices=[FakeDevice(ARCH_AMPERE, "GPU-old", lambda n: b"", b"")])
    with pytest.raises(UnsupportedPlatform, match="architecture 7"):
        await NvidiaAttester(fake).get_evidence(b"\0" * 32)


async def test_malformed_report_from_device() -> None:
    fake = FakeNvml(devices=[FakeDevice(9, "GPU-bad", lambda n: b"\x11\xe0\x01", b"")])
    with pytest.raises(AttestationError, match="malformed"):
        await NvidiaAttester(fake).get_evidence(b"\0" * 32)


@pytest.mark.parametrize(
    ("mode", "after_collect", "after_accept"),
    [
        (ReadyState.AFTER_ACCEPT, False, True),
        (ReadyState.ON_COLLECT, True, True),
        (ReadyState.NEVER, False, False),
    ],
)
async def test_ready_state_modes(mode: ReadyState, after_collect: bool, after_accept: bool) -> None:
    fake = FakeNvml(devices=[recorded_hopper()])
    att = NvidiaAttester(fake, ready_state=mode)
    await att.get_evidence(NONCE_931)
    assert fake.ready is after_collect
    await att.on_attestation_accepted()
    assert fake.ready is after_accept


async def test_cc_turned_off_between_detect_and_collect() -> None:
    fake = FakeNvml(devices=[recorded_hopper()])
    att = NvidiaAttester.detect(fake)
    assert att is not None
    fake.cc_on = False
    with pytest.raises(CcModeDisabled):
        await att.get_evidence(NONCE_931)
