"""Primary TEE and device detection against fake /sys and /dev trees."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest

from attestation import detect
from attestation.detect import (
    HostView,
    detect_devices,
    detect_primary_tee,
    make_primary_attester,
    present_platforms,
)
from attestation.errors import UnsupportedPlatform
from attestation.nvidia.errors import CcModeDisabled, NvmlCallError
from attestation.sample import SampleAttester


def _plat(root: Path, env: dict[str, str] | None = None, machine: str = "x86_64") -> HostView:
    return HostView(root=root, env=env or {}, machine=machine)


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("")


def test_empty_root_falls_back_to_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert present_platforms(_plat(tmp_path)) == ["sample"]
    assert detect_primary_tee(_plat(tmp_path)) == "sample"
    assert "sample attester" in caplog.text


def test_platform_probes(tmp_path: Path) -> None:
    _touch(tmp_path, "dev/tdx_guest")
    (tmp_path / "sys/devices/platform/sev-guest").mkdir(parents=True)
    _touch(tmp_path, "dev/csv-guest")
    _touch(tmp_path, "dev/tpm0")
    assert present_platforms(_plat(tmp_path)) == ["tdx", "snp", "csv", "tpm", "sample"]


def test_tsm_report_provider(tmp_path: Path) -> None:
    entry = tmp_path / detect.TSM_REPORT_DIR / "existing"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("sev_guest\n")
    assert "tdx" not in present_platforms(_plat(tmp_path))
    (entry / "provider").write_text("tdx_guest\n")
    assert present_platforms(_plat(tmp_path))[0] == "tdx"
    # the probe directory it created is gone again
    assert sorted(p.name for p in entry.parent.iterdir()) == ["existing"]
    # arm_cca_guest only counts on aarch64
    (entry / "provider").write_text("arm_cca_guest\n")
    assert "cca" not in present_platforms(_plat(tmp_path))
    assert "cca" in present_platforms(_plat(tmp_path, machine="aarch64"))


def test_tpm_device_from_env(tmp_path: Path) -> None:
    _touch(tmp_path, "dev/tpmrm9")
    assert "tpm" in present_platforms(_plat(tmp_path, {"AA_TPM_DEVICE": "/dev/tpmrm9"}))
    assert "tpm" not in present_platforms(_plat(tmp_path, {"AA_TPM_DEVICE": "/dev/nothing"}))


def test_platform_without_attester_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path, "dev/csv-guest")
    assert detect_primary_tee(_plat(tmp_path)) == "sample"
    assert "csv detected but no attester" in caplog.text


def test_installed_attester_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeSnp:
        tee = "snp"

        async def get_evidence(self, report_data: bytes) -> Any:
            return {"attestation_report": {}}

        async def bind_init_data(self, digest: bytes) -> None:
            return None

    monkeypatch.setitem(detect.ATTESTERS, "snp", FakeSnp)
    (tmp_path / "sys/devices/platform/sev-guest").mkdir(parents=True)
    assert detect_primary_tee(_plat(tmp_path)) == "snp"
    assert isinstance(make_primary_attester("snp"), FakeSnp)


def test_every_detected_platform_but_csv_has_an_attester() -> None:
    # the registry is static: each factory imports a module that ships with the project
    assert set(detect.PRIMARY_ORDER) - set(detect.ATTESTERS) == {"csv"}
    for tee, factory in detect.ATTESTERS.items():
        # off-platform a factory gives its attester or a typed "unsupported"; never an ImportError
        with contextlib.suppress(UnsupportedPlatform):
            assert factory().tee == tee


def test_make_primary_attester() -> None:
    assert isinstance(make_primary_attester("sample"), SampleAttester)
    with pytest.raises(UnsupportedPlatform):
        make_primary_attester("csv")


async def test_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(detect.DEVICE_PROBES, "nvidia", lambda plat: None)  # no GPU
    assert await detect_devices(_plat(tmp_path)) == []
    devs = await detect_devices(_plat(tmp_path, {"ENABLE_SAMPLE_DEVICE": "1"}))
    assert [d.tee for d in devs] == ["sampledevice"]
    with pytest.raises(ValueError, match="unknown device probe"):
        await detect_devices(_plat(tmp_path), probes=["fpga"])


async def test_nvidia_without_nvml_is_no_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real probe: pynvml (nvidia-ml-py) is an optional dependency, absent here
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert await detect_devices(_plat(tmp_path), probes=["nvidia"]) == []


async def test_nvidia_device_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Gpu:
        tee = "nvidia"

        async def get_evidence(self, report_data: bytes) -> Any:
            return {"device_evidence_list": []}

        async def on_attestation_accepted(self) -> None:
            return None

    monkeypatch.setitem(detect.DEVICE_PROBES, "nvidia", lambda plat: Gpu())
    devs = await detect_devices(_plat(tmp_path, {"ENABLE_SAMPLE_DEVICE": "x"}))
    assert [d.tee for d in devs] == ["nvidia", "sampledevice"]


async def test_broken_nvidia_probe_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(plat: Any) -> None:
        raise NvmlCallError("NVML exploded")

    monkeypatch.setitem(detect.DEVICE_PROBES, "nvidia", boom)
    assert await detect_devices(_plat(tmp_path)) == []
    assert "nvidia device detection failed: NVML exploded" in caplog.text


async def test_nvidia_cc_off_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from attestation.nvidia.attester import NvidiaAttester

    def cc_off(cls: Any) -> None:
        raise CcModeDisabled("GPUs present but confidential computing is off")

    monkeypatch.setattr(NvidiaAttester, "detect", classmethod(cc_off))
    assert await detect_devices(_plat(tmp_path), probes=["nvidia"]) == []
    assert "not attestable: GPUs present but confidential computing is off" in caplog.text


async def test_untyped_probe_failure_is_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(plat: Any) -> None:
        raise RuntimeError("a bug, not a missing device")

    monkeypatch.setitem(detect.DEVICE_PROBES, "nvidia", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        await detect_devices(_plat(tmp_path))
