"""Bounded file reads: every file the CDH reads has a named size limit."""

from __future__ import annotations

import errno
from pathlib import Path

from coco_common.files import FileTooLarge, read_bounded

__all__ = ["read_limited"]


def read_limited(path: Path, limit: int) -> bytes:
    """The contents of the regular file ``path``
    (:func:`coco_common.files.read_bounded`), with every failure an ``OSError``
    so callers report it as they report any other unreadable file (by
    ``strerror``): more than ``limit`` bytes is ``EFBIG`` "larger than <limit>
    bytes", a FIFO, device or directory ``EINVAL`` "not a regular file"."""
    try:
        return read_bounded(path, limit)
    except FileTooLarge as exc:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path)) from exc
    except ValueError as exc:
        raise OSError(errno.EINVAL, "not a regular file", str(path)) from exc
