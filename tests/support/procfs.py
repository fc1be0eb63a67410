"""Reading a process's memory figures from ``/proc/PID/status``: the one reader the
tests and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ProcStatusError", "status_kib"]


class ProcStatusError(LookupError):
    """The field is not in ``/proc/PID/status`` (an exited or zombie process has no
    ``Vm*`` lines, a kernel thread never has them)."""


def status_kib(pid: int | str, field: str) -> int:
    """The ``kB`` value of ``field`` (``VmRSS``, ``VmHWM``, ...) of process ``pid``
    (``"self"`` for this one). A missing field raises :class:`ProcStatusError`
    rather than reading as 0, which a memory figure would silently accept."""
    prefix = field + ":"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(prefix):
            value, unit = line[len(prefix) :].split()
            if unit != "kB":
                raise ProcStatusError(f"/proc/{pid}/status {field} is in {unit!r}, not kB")
            return int(value)
    raise ProcStatusError(f"/proc/{pid}/status has no {field} line (has the process exited?)")
