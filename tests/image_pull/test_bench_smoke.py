"""A tiny-size run of bench/pull_vs_skopeo.py, so the benchmark keeps working (not a timing test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.registry import have_tools

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the pull mounts overlayfs")
def test_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    reason = have_tools()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "r.json"
    cp = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/pull_vs_skopeo.py"),
            "--size-mb",
            "2",
            "--layers",
            "2",
            "--reps",
            "1",
            "--targets",
            "shm",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(out),
            "--baseline",  # this checkout again, through PYTHONPATH: the before/after path runs
            str(ROOT),
        ],
        capture_output=True,
        timeout=300,
        cwd=ROOT,
    )
    assert cp.returncode == 0, cp.stderr.decode()[-2000:]
    res = json.loads(out.read_text())
    shm = res["targets"]["shm"]
    for name in ("coco", "base", "skopeo", "umoci", "peer", "floor"):
        assert shm[name]["wall_s"] > 0
    assert shm["ratio_wall"] > 0
    assert res["floor_inflater"].startswith("zlib-ng ") and res["baseline"] == str(ROOT)
    assert b"coco/(skopeo+umoci): wall median" in cp.stdout
    assert b"coco/baseline" in cp.stdout
