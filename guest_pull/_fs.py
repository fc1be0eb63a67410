"""Whole-file replacement for files the glue writes (initdata entries, unsealed secrets)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a fresh, unpredictable temp file in the same
    directory (created exclusively, so never through a planted link), flushed to
    disk, then renamed over ``path``. On any failure the temp file is removed, so
    neither a half-written file nor a stray copy of ``data`` is left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
