"""The per-pull disk budget: uncompressed bytes a pull may unpack, counted as written.

A layer's expansion ratio alone never stops a gzip bomb (DEFLATE's ratio tops
out near 1032x, under any useful ratio limit), and a registry-declared size
proves nothing. So every pull has a budget of uncompressed bytes, by default
the free space of the work dir less a reserve (:data:`RESERVE`, at most a
sixteenth of the file system) when the pull starts
(``PullerConfig.max_unpacked_bytes`` sets it). Layers report what they have
written (:class:`~image_pull.stream.HashingReader` progress, from worker
threads or worker processes); the sum over the pull's layers past the budget,
or the work dir's free space falling under :data:`RESERVE` while layers
unpack, fails the pull with :class:`~image_pull.errors.InsufficientSpace`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from image_pull.errors import InsufficientSpace, StoreError

__all__ = ["RESERVE", "UnpackBudget", "free_bytes"]

#: free space a pull leaves in the work dir (default budget and the watch during unpack)
RESERVE = 32 << 20


def _statvfs(path: Path) -> os.statvfs_result:
    try:
        return os.statvfs(path)
    except OSError as exc:
        raise StoreError(f"cannot stat the work dir: {exc.strerror}") from exc


def free_bytes(path: Path) -> int:
    st = _statvfs(path)
    return st.f_bavail * st.f_frsize


def _fs_size(path: Path) -> int:
    st = _statvfs(path)
    return st.f_blocks * st.f_frsize


class UnpackBudget:
    """Thread-safe running total of the bytes a pull's layers have written."""

    def __init__(self, limit: int, watch: Path, *, reserve: int = RESERVE, derived: bool = False) -> None:
        self.limit = limit
        self.watch = watch
        self.reserve = reserve
        self.derived = derived  # the limit is the free space, not a configured budget
        self._written: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_pull(cls, work_dir: Path, configured: int | None) -> UnpackBudget:
        reserve = min(RESERVE, _fs_size(work_dir) // 16)
        if configured is not None:
            if configured <= 0:
                raise ValueError("max_unpacked_bytes must be positive")
            return cls(configured, work_dir, reserve=reserve)
        return cls(max(free_bytes(work_dir) - reserve, 0), work_dir, reserve=reserve, derived=True)

    @property
    def used(self) -> int:
        with self._lock:
            return sum(self._written.values())

    def exceeded(self) -> str:
        """The error text for a pull over its budget."""
        if self.derived:
            return (
                f"no space left in {self.watch}: the pull unpacks more than the {self.limit} bytes "
                "that were free (budget: max_unpacked_bytes)"
            )
        return f"the pull unpacks more than its budget of {self.limit} bytes (max_unpacked_bytes)"

    def remaining(self, layer: str) -> int:
        """What ``layer`` may still write: the budget less what the pull's other layers wrote
        (a hard limit for the layer; the shared total is checked as layers report)."""
        with self._lock:
            others = sum(n for k, n in self._written.items() if k != layer)
        return max(self.limit - others, 0)

    def update(self, layer: str, written: int) -> None:
        """Layer ``layer`` has now written ``written`` bytes; raise when the pull is over budget."""
        with self._lock:
            self._written[layer] = max(written, self._written.get(layer, 0))
            used = sum(self._written.values())
        if used > self.limit:
            raise InsufficientSpace(self.exceeded())
        if free_bytes(self.watch) < self.reserve:
            raise InsufficientSpace(
                f"free space in {self.watch} fell below {self.reserve >> 20} MiB during the pull"
            )

    def forget(self, layer: str) -> None:
        """A layer attempt that was discarded (its staging dir removed) no longer counts."""
        with self._lock:
            self._written.pop(layer, None)
