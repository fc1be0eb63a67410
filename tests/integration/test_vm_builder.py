"""The guest builder's project disk (vm/build_guest.py), without QEMU or root:
what the guest mounts at /opt/coco-project, and its content-hash cache key."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from vm import build_guest

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
    reason="e2fsprogs (mkfs.ext4, debugfs) not installed",
)


def _cat(img: Path, path: str) -> bytes:
    cp = subprocess.run(["debugfs", "-R", f"cat {path}", str(img)], capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def _ls(img: Path, path: str) -> list[str]:
    cp = subprocess.run(["debugfs", "-R", f"ls -l {path}", str(img)], capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return [line.split()[-1] for line in cp.stdout.decode().splitlines() if line.strip()]


def test_packages_follow_pyproject() -> None:
    data = tomllib.loads((build_guest.REPO / "pyproject.toml").read_text())
    wanted = {p.rstrip("*") for p in data["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert set(build_guest.packages()) == {w for w in wanted if (build_guest.REPO / w).is_dir()}
    dsts = [d for d, _ in build_guest.project_files()]
    assert "guest/guest_scenario.py" in dsts
    assert "guest/coco-init" not in dsts  # PID 1 lives on the root file system
    assert not any("__pycache__" in d or d.endswith(".pyc") for d in dsts)


def test_project_disk_contents_and_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_guest, "CACHE", tmp_path)
    img = build_guest.build_project_disk()
    assert img.parent == tmp_path and img.name.startswith("project-")
    # console scripts run the guest venv's python and import the entry point
    scripts = build_guest.console_scripts()
    assert set(scripts) <= set(_ls(img, "/bin"))
    cdh = _cat(img, "/bin/confidential-data-hub").decode()
    mod, func = scripts["confidential-data-hub"].split(":")
    assert cdh.startswith("#!/opt/coco/bin/python\n") and f"from {mod} import {func}" in cdh
    # sources and their bytecode (compiled on the host: TCG is slow) sit under site/
    assert "__init__.py" in _ls(img, "/site/cdh")
    assert any(n.endswith(".pyc") for n in _ls(img, "/site/cdh/__pycache__"))
    assert _cat(img, "/guest/guest_scenario.py") == (build_guest.GUEST_SRC / "guest_scenario.py").read_bytes()
    # same content -> same cached image, no rebuild
    mtime = img.stat().st_mtime_ns
    assert build_guest.build_project_disk() == img and img.stat().st_mtime_ns == mtime
    # one changed file -> another image
    extra = tmp_path / "extra.py"
    extra.write_text("X = 1\n")
    files = build_guest.project_files()
    monkeypatch.setattr(build_guest, "project_files", lambda: [*files, ("site/extra.py", extra)])
    other = build_guest.build_project_disk()
    assert other != img and "extra.py" in _ls(other, "/site")
