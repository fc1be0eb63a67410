"""A small Prometheus text-format registry (counters, gauges, histograms)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._hist_sum: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self._gauges: dict[str, Callable[[], float]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = fn

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._hist.setdefault(key, [0.0] * (len(_BUCKETS) + 1))
            for i, b in enumerate(_BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            counts[-1] += 1
            self._hist_sum[key] += seconds

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                kind, text = self._help.get(name, ("counter", name))
                out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                for key, v in sorted(series.items()):
                    out.append(f"{name}{_labels(key)} {v:g}")
            if self._hist:
                name = "kbs_http_request_duration_seconds"
                out += [f"# HELP {name} HTTP request latency", f"# TYPE {name} histogram"]
                for key, counts in sorted(self._hist.items()):
                    for i, b in enumerate(_BUCKETS):
                        out.append(f"{name}_bucket{_labels((*key, ('le', f'{b:g}')))} {counts[i]:g}")
                    out.append(f"{name}_bucket{_labels((*key, ('le', '+Inf')))} {counts[-1]:g}")
                    out.append(f"{name}_sum{_labels(key)} {self._hist_sum[key]:.6f}")
                    out.append(f"{name}_count{_labels(key)} {counts[-1]:g}")
        for name, fn in sorted(self._gauges.items()):
            _, text = self._help[name]
            out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {fn():g}"]
        return "\n".join(out) + "\n"
