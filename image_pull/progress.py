"""Progress events of a pull, for CLIs (TTY progress line) and structured logs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

__all__ = ["ProgressEvent", "TtyProgress"]


@dataclass(frozen=True)
class ProgressEvent:
    """``kind``: resolved | layer-start | layer-progress | layer-cached | layer-done | bundle | done."""

    kind: str
    layer: int | None = None  # index in the manifest
    digest: str | None = None
    bytes: int = 0  # bytes downloaded so far for this layer (or the whole pull for "done")
    total: int = 0  # compressed size of the layer (or of all layers)
    rate: float = 0.0  # bytes/s for this layer so far
    elapsed: float = 0.0
    message: str = ""


class TtyProgress:
    """Renders events as one rewritten status line on a terminal."""

    def __init__(self, out: TextIO = sys.stderr, *, layers: int = 0) -> None:
        self._out = out
        self._layers: dict[int, tuple[int, int]] = {}
        self._last = 0.0

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.layer is not None and ev.kind in (
            "layer-start",
            "layer-progress",
            "layer-done",
            "layer-cached",
        ):
            self._layers[ev.layer] = (ev.total if ev.kind == "layer-cached" else ev.bytes, ev.total)
        now = time.monotonic()
        if ev.kind == "layer-progress" and now - self._last < 0.1:
            return
        self._last = now
        got = sum(b for b, _ in self._layers.values())
        total = sum(t for _, t in self._layers.values())
        done = sum(1 for b, t in self._layers.values() if t and b >= t)
        line = f"layers {done}/{len(self._layers)}  {got / 1e6:.1f}/{total / 1e6:.1f} MB"
        if ev.rate:
            line += f"  {ev.rate / 1e6:.1f} MB/s"
        if ev.kind in ("bundle", "done"):
            line += f"  {ev.kind}"
        self._out.write("\r\x1b[K" + line)
        if ev.kind == "done":
            self._out.write("\n")
        self._out.flush()
