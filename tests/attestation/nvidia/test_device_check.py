"""scripts/nvidia_device_check.py: clean "no device" here; real collection where a GPU exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.errors import UnsupportedPlatform
from attestation.nvidia.device import PynvmlBackend

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "nvidia_device_check.py"


def _gpu_present() -> bool:
    be = PynvmlBackend()
    try:
        be.init()
    except UnsupportedPlatform:
        return False
    try:
        return be.device_count() > 0
    finally:
        be.shutdown()


def run_script() -> tuple[int, dict[str, object]]:
    cp = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    return cp.returncode, json.loads(cp.stdout)


def test_script_without_gpu_reports_no_device() -> None:
    if _gpu_present():
        pytest.skip("this machine has an NVIDIA GPU; see test_script_on_real_gpu")
    rc, out = run_script()
    assert rc == 0
    assert out["status"] == "no device"
    assert out["nvml"]["available"] is False  # type: ignore[index]


@pytest.mark.accelerator
def test_script_on_real_gpu() -> None:
    if not _gpu_present():
        pytest.skip("needs an NVIDIA GPU with NVML (none on this machine)")
    rc, out = run_script()
    assert out["status"] in {"ok", "cc off"}, out
    assert rc == 0
