"""The performance table's rows (``bench/table.py``) from benchmark documents: ratios,
verdicts and the rows that were not measured. No timing is measured or asserted here."""

from __future__ import annotations

from typing import Any

from bench import table


def _pull(coco: float, peer: float, floor: float) -> dict[str, Any]:
    t = {"coco": {"wall_s": coco}, "peer": {"wall_s": peer}, "floor": {"wall_s": floor},
         "ratio_wall_min": coco / peer, "ratio_cpu": 0.5}  # fmt: skip
    return {"size_mb": 64, "layers": 5, "reps": 3, "targets": {"shm": t}}


def test_pull_rows_give_ratio_and_verdict() -> None:
    rows = table.pull_rows(_pull(1.0, 4.0, 0.8))
    by = {r.what: r for r in rows}
    tmpfs = by["pull + unpack vs skopeo + umoci, tmpfs"]
    assert tmpfs.ratio == 0.25 and tmpfs.met is True
    floor = by["pull + unpack vs the floor, tmpfs"]
    assert floor.ratio == 1.25 and floor.met is True
    assert floor.note is not None and "gunzips with zlib," in floor.note  # a document from before zlib-ng
    doc = _pull(1.0, 4.0, 0.8) | {"floor_inflater": "zlib-ng 2.3.3"}
    floor = {r.what: r for r in table.pull_rows(doc)}["pull + unpack vs the floor, tmpfs"]
    assert floor.note is not None and "gunzips with zlib-ng 2.3.3, as the pull does" in floor.note
    ext4 = by["pull + unpack vs skopeo + umoci, ext4"]
    assert ext4.ours == "not measured" and ext4.met is None and ext4.note == "target not run"


def test_a_missed_target_says_so() -> None:
    rows = table.pull_rows(_pull(3.0, 4.0, 1.0))
    assert [r.met for r in rows if r.ratio is not None] == [False, False]


def test_failed_benchmarks_become_not_measured_rows() -> None:
    assert table.hostile_row("bench/kbs_hostile.py not in this checkout").ours == "not measured"
    assert all(r.ours == "not measured" for r in table.footprint_rows("exit 1"))
    assert table.cdh_row("timed out after 600 s").note == "timed out after 600 s"


def test_kbs_rows_use_the_16_client_run() -> None:
    doc = {"flow": {"rps": 250.0, "p99_ms": 90.0, "kbs_cpu_ms": 2.0},
           "plain": {"rps": 2000.0, "p99_ms": 9.0, "kbs_cpu_ms": 0.1}}  # fmt: skip
    flows, cpu = table.kbs_rows({1: "exit 1", 16: doc})
    assert flows.met is True and flows.ratio == 8.0
    assert cpu.met is True and cpu.ratio == 20.0
    # the CPU target counts the policy workers too, when the run measured them
    doc["flow"]["kbs_tree_cpu_ms"] = 3.0
    assert table.kbs_rows({16: doc})[1].met is False
