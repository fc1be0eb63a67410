"""Runtime measurements (``ExtendRuntimeMeasurement``) behind one small protocol.

The Attestation Agent appends an AAEL event (``"<domain> <operation> <content>"``)
and extends a measurement register. How that happens is platform specific
(TDX RTMR through sysfs, a software register for ``sample``); the agent only
needs :class:`RuntimeMeasurer`. Implementations come from
:mod:`attestation.eventlog` (TCG2 records, write-ahead log, PCR→RTMR mapping,
guest-components.md §2.8) when it is installed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attestation.errors import UnsupportedPlatform

__all__ = ["DEFAULT_EVENTLOG_PATH", "RuntimeMeasurer", "open_measurer"]

log = logging.getLogger(__name__)

DEFAULT_EVENTLOG_PATH = Path("/run/attestation-agent/eventlog")


@runtime_checkable
class RuntimeMeasurer(Protocol):
    """Appends one AAEL event and extends the matching register.

    Raises :class:`~attestation.errors.UnsupportedPlatform` when the platform
    cannot extend a register (the RPC then answers ``NOT_SUPPORTED``)."""

    async def extend(self, domain: str, operation: str, content: str, register_index: int | None) -> None: ...


class _EventLogAdapter:
    """Wraps an ``attestation.eventlog`` event log (sync or async ``extend``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def extend(self, domain: str, operation: str, content: str, register_index: int | None) -> None:
        result = self._inner.extend(domain, operation, content, register_index=register_index)
        if inspect.isawaitable(result):
            await result


def open_measurer(tee: str, *, init_pcr: int, path: Path = DEFAULT_EVENTLOG_PATH) -> RuntimeMeasurer:
    """Open the event log for ``tee`` (recovering a pending write-ahead entry).

    Raises :class:`UnsupportedPlatform` when no event-log implementation for
    ``tee`` is installed; other errors (a WAL that does not match the register)
    propagate and stop the agent, as upstream refuses to start then."""
    try:
        module = importlib.import_module("attestation.eventlog")
    except ImportError as exc:
        raise UnsupportedPlatform("runtime measurement: attestation.eventlog is not installed") from exc
    opener = getattr(module, "open_for_tee", None)
    if opener is None:
        raise UnsupportedPlatform("runtime measurement: attestation.eventlog has no open_for_tee()")
    return _EventLogAdapter(opener(tee, init_pcr=init_pcr, path=path))
