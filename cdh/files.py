"""Bounded file reads: every file the CDH reads has a named size limit."""

from __future__ import annotations

import errno
from pathlib import Path

__all__ = ["read_limited"]


def read_limited(path: Path, limit: int) -> bytes:
    """The contents of ``path``. More than ``limit`` bytes is ``OSError(EFBIG,
    "larger than <limit> bytes")``, so callers report it as they report any
    other unreadable file (by ``strerror``)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data
