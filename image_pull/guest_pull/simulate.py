"""``coco-guest-pull simulate``: placeholder until the end-to-end simulation lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from image_pull.guest_pull.errors import GlueError

__all__ = ["simulate"]


def simulate(runtime_class: str, pod: Path, *, workdir: Path | None = None) -> dict[str, Any]:
    raise GlueError("simulate is not implemented yet")
