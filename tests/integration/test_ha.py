"""The KBS fleet under load and faults (``make ha-test`` runs the same harness for 60 s).

The invariant checker is tested first on made-up records, so a run that passes
is known to be one in which a wrong release or a lost write would have shown.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration import ha_harness as ha
from tests.support.postgres import postgres_available


def _load(flows: list[ha.Flow], writes: list[ha.Write], policies: list[ha.PolicyWrite]) -> ha._Load:
    load = ha._Load.__new__(ha._Load)
    load.flows, load.writes, load.policies = flows, writes, policies
    load.seconds, load.clients = 10.0, 1
    load.faults = [{"fault": f, "_start": 100.0, "_end": 101.0} for f in ("a", "b", "c")]
    load.samples = {"kbs-0": {"rss_early_kib": 1000, "rss_end_kib": 1100, "fds_early": 10, "fds_end": 11}}
    return load


def _flow(value: bytes, window: tuple[float, float], gated: bytes | None = None,
          gated_window: tuple[float, float] = (0.0, 0.0)) -> ha.Flow:  # fmt: skip
    f = ha.Flow(0, window[0] - 0.1, window[1] + 0.1, ok=True, served_by=["kbs-0", "kbs-1"])
    f.value, f.get_window, f.gated, f.gated_window = value, window, gated, gated_window
    return f


WRITES = [
    ha.Write(0, ha.RES, b"seed", 0.0, 0.0, 200),
    ha.Write(1, "default/ha/w1", b"v1", 9.0, 9.5, 200),
    ha.Write(1, ha.RES, b"v1", 10.0, 11.0, 200),
    ha.Write(2, "default/ha/w2", b"v2", 19.0, 19.5, 200),
    ha.Write(2, ha.RES, b"v2", 20.0, 21.0, 200),
    ha.Write(3, ha.RES, b"v3-refused", 30.0, 31.0, 401),
]
POLICIES = [ha.PolicyWrite(5, False, 40.0, 41.0, 200), ha.PolicyWrite(10, True, 60.0, 61.0, 200)]
READ_BACK = {"default/ha/w1": b"v1", "default/ha/w2": b"v2", ha.RES: b"v2"}


def test_checker_accepts_consistent_records() -> None:
    flows = [
        _flow(b"seed", (5.0, 6.0)),
        _flow(b"seed", (10.5, 10.6)),  # the write of v1 was in flight: either value may be served
        _flow(b"v1", (10.5, 10.6)),
        _flow(b"v2", (35.0, 36.0), gated=ha.GATED_VALUE, gated_window=(35.0, 36.0)),  # allow still in force
        _flow(b"v2", (45.0, 46.0), gated=None, gated_window=(45.0, 46.0)),
        _flow(b"v2", (60.5, 60.6), gated=ha.GATED_VALUE, gated_window=(60.5, 60.6)),  # allow being written
    ]
    r = ha._check(_load(flows, WRITES, POLICIES), READ_BACK, "redis")
    assert r.ok, r.summary
    assert r.summary["wrong_releases"] == 0 and r.summary["lost_writes"] == 0


@pytest.mark.parametrize(
    ("flow", "why"),
    [
        (_flow(b"seed", (12.0, 13.0)), "overwritten value served after the overwrite was acked"),
        (_flow(b"v2", (5.0, 6.0)), "value served before it was written"),
        (_flow(b"v3-refused", (35.0, 36.0)), "a refused write's value"),
        (_flow(b"forged", (35.0, 36.0)), "a value never written"),
        (_flow(b"v2", (45.0, 46.0), gated=ha.GATED_VALUE, gated_window=(45.0, 46.0)), "gated while denied"),
        (_flow(b"v2", (45.0, 46.0), gated=b"other", gated_window=(62.0, 63.0)), "gated value never stored"),
    ],
)
def test_checker_finds_wrong_releases(flow: ha.Flow, why: str) -> None:
    r = ha._check(_load([flow], WRITES, POLICIES), READ_BACK, "redis")
    assert not r.ok and r.summary["wrong_releases"] == 1, why


def test_checker_counts_undecryptable_answers_as_wrong() -> None:
    f = ha.Flow(0, 1.0, 2.0, ok=False, undecryptable=1, error="not for its key")
    r = ha._check(_load([_flow(b"seed", (5.0, 6.0)), f], WRITES, POLICIES), READ_BACK, "redis")
    assert r.summary["wrong_releases"] == 1 and not r.ok


def test_checker_finds_lost_writes_and_leaks() -> None:
    load = _load([_flow(b"seed", (5.0, 6.0))], WRITES, POLICIES)
    r = ha._check(load, {**READ_BACK, "default/ha/w2": None}, "redis")
    assert r.summary["lost_writes"] == 1 and not r.ok
    r = ha._check(load, {**READ_BACK, ha.RES: b"v1"}, "redis")  # the last acked value of res is gone
    assert r.summary["lost_writes"] == 1
    load.samples["kbs-0"]["fds_end"] = 100
    r = ha._check(load, READ_BACK, "redis")
    assert r.summary["leaks"] and not r.ok


def test_checker_requires_failures_only_during_faults() -> None:
    outside = ha.Flow(0, 50.0, 51.0, ok=False, error="x")
    during = ha.Flow(0, 100.5, 101.5, ok=False, error="x")
    r = ha._check(_load([_flow(b"seed", (5.0, 6.0)), during], WRITES, POLICIES), READ_BACK, "redis")
    assert r.ok and r.summary["failed_during_faults"] == 1
    r = ha._check(_load([_flow(b"seed", (5.0, 6.0)), outside], WRITES, POLICIES), READ_BACK, "redis")
    assert not r.ok and r.summary["failed_outside_faults"] == 1


needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy (Debian) not installed")


@pytest.mark.ha
@needs_haproxy
@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_fleet_under_faults(store: str) -> None:
    if store == "redis" and shutil.which("redis-server") is None:
        pytest.skip("redis-server (Debian) not installed")
    if store == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL (Debian postgresql) not installed")
    # not under pytest's private tmp dir: the PostgreSQL server runs as user postgres
    work = Path(tempfile.mkdtemp(prefix="coco-ha-"))
    os.chmod(work, 0o755)
    try:
        r = ha.run_store(store, work, seconds=25, clients=8)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s = r.summary
    assert s["wrong_releases"] == 0, s.get("wrong_examples")
    assert s["lost_writes"] == 0, s.get("lost_examples")
    assert len(s["faults"]) == 3
    assert s["cross_replica_sessions"] > 0
    assert s["failed_outside_faults"] == 0, s.get("failure_examples")
    assert not s["leaks"], s["leaks"]
    assert r.ok
