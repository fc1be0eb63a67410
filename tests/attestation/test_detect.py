"""Primary TEE and device detection against fake /sys and /dev trees."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from attestation import detect
from attestation.detect import (
    Platform,
    detect_devices,
    detect_primary_tee,
    make_primary_attester,
    present_platforms,
)
from attestation.errors import UnsupportedPlatform
from attestation.sample import SampleAttester


def _plat(root: Path, env: dict[str, str] | None = None, machine: str = "x86_64") -> Platform:
    return Platform(root=root, env=env or {}, machine=machine)


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

    mod = types.ModuleType("attestation.snp.attester")
    mod.SnpAttester = FakeSnp  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attestation.snp.attester", mod)
    (tmp_path / "sys/devices/platform/sev-guest").mkdir(parents=True)
    assert detect_primary_tee(_plat(tmp_path)) == "snp"
    assert isinstance(make_primary_attester("snp"), FakeSnp)


def test_make_primary_attester() -> None:
    assert isinstance(make_primary_attester("sample"), SampleAttester)
    with pytest.raises(UnsupportedPlatform):
        make_primary_attester("csv")


async def test_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no NVIDIA module answer: simulate "no device"
    mod = types.ModuleType("attestation.nvidia.attester")

    class NoGpu:
        tee = "nvidia"

        @classmethod
        def detect(cls) -> None:
            return None

    mod.NvidiaAttester = NoGpu  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attestation.nvidia.attester", mod)
    assert await detect_devices(_plat(tmp_path)) == []
    devs = await detect_devices(_plat(tmp_path, {"ENABLE_SAMPLE_DEVICE": "1"}))
    assert [d.tee for d in devs] == ["sampledevice"]


async def test_nvidia_device_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Gpu:
        tee = "nvidia"

        @classmethod
        async def detect(cls) -> Gpu:
            return cls()

        async def get_evidence(self, report_data: bytes) -> Any:
            return {"device_evidence_list": []}

        async def on_attestation_accepted(self) -> None:
            return None

    mod = types.ModuleType("attestation.nvidia.attester")
    mod.NvidiaAttester = Gpu  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attestation.nvidia.attester", mod)
    devs = await detect_devices(_plat(tmp_path, {"ENABLE_SAMPLE_DEVICE": "x"}))
    assert [d.tee for d in devs] == ["nvidia", "sampledevice"]


async def test_broken_nvidia_probe_is_tolerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("attestation.nvidia.attester")

    def boom() -> None:
        raise RuntimeError("NVML exploded")

    mod.detect = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attestation.nvidia.attester", mod)
    assert await detect_devices(_plat(tmp_path)) == []
