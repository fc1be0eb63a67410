"""What the evidence benchmarks share: the fixtures folder and a rate loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support import vectors as _vectors

ROOT = Path(__file__).resolve().parents[1]


def evidence(platform: str) -> Path:
    """``tests/fixtures/evidence/<platform>`` of this checkout (the test suite's own lookup)."""
    return _vectors.evidence(platform)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over ``seconds`` after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed
