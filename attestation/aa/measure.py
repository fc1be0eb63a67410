"""Runtime measurements (``ExtendRuntimeMeasurement``) behind one small protocol.

The Attestation Agent appends an AAEL event (``"<domain> <operation> <content>"``)
and extends a measurement register. The event log itself (TCG2 records,
write-ahead log and its recovery, PCR→CC-MR mapping; guest-components.md §2.8)
is :class:`attestation.eventlog.EventLog`; this module picks the register bank
per TEE:

* ``tdx``: RTMRs through the kernel's measurements sysfs (``NOT_SUPPORTED``
  where the kernel lacks it);
* ``sample``: a file-backed software register bank (SHA-384, TDX mapping) next
  to the log, so the whole path is testable without hardware;
* others: no extendable register → ``NOT_SUPPORTED``, as upstream.

Files: ``/run/attestation-agent/eventlog`` and ``.wal_event_entry`` beside it;
``AAEL_PATH`` (the variable upstream's readers honour) moves both.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from attestation.errors import UnsupportedPlatform

if TYPE_CHECKING:  # imported on use: keeps the AA's start-up lean
    from attestation.eventlog import EventLog, MeasurementRegister

__all__ = ["DEFAULT_EVENTLOG_PATH", "EventLogMeasurer", "RuntimeMeasurer", "eventlog_path", "open_measurer"]

log = logging.getLogger(__name__)

DEFAULT_EVENTLOG_PATH = Path("/run/attestation-agent/eventlog")
WAL_NAME = ".wal_event_entry"
SAMPLE_REGISTERS_DIR = "sample-registers"


@runtime_checkable
class RuntimeMeasurer(Protocol):
    """Appends one AAEL event and extends the matching register.

    Raises :class:`~attestation.errors.UnsupportedPlatform` when the platform
    cannot extend a register (the RPC then answers ``NOT_SUPPORTED``)."""

    async def extend(self, domain: str, operation: str, content: str, register_index: int | None) -> None: ...


class EventLogMeasurer:
    """:class:`RuntimeMeasurer` over an :class:`attestation.eventlog.EventLog`
    (its blocking, fsync'ing ``extend`` runs in a worker thread)."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log

    async def extend(self, domain: str, operation: str, content: str, register_index: int | None) -> None:
        await asyncio.to_thread(self.event_log.extend, domain, operation, content, register_index)


def eventlog_path(env: Mapping[str, str] | None = None) -> Path:
    value = (os.environ if env is None else env).get("AAEL_PATH")
    return Path(value) if value else DEFAULT_EVENTLOG_PATH


def open_measurer(tee: str, *, init_pcr: int, path: Path = DEFAULT_EVENTLOG_PATH) -> RuntimeMeasurer:
    """Open the event log for ``tee`` (replaying a pending write-ahead entry).

    Raises :class:`UnsupportedPlatform` when ``tee`` has no extendable register
    here; an :class:`attestation.eventlog.EventLogError` (a WAL that matches no
    register, a log held by another process) propagates and stops the agent,
    as upstream refuses to start then."""
    from attestation.eventlog import EventLog, SoftwareRegisters

    registers: MeasurementRegister
    if tee == "tdx":
        from attestation.tdx.registers import TdxRtmrRegisters

        registers = TdxRtmrRegisters()
    elif tee in ("tpm", "az-snp-vtpm", "az-tdx-vtpm"):
        from attestation.tpm.registers import TpmPcrRegisters

        registers = TpmPcrRegisters()
    elif tee == "sample":
        registers = SoftwareRegisters(path.parent / SAMPLE_REGISTERS_DIR)
        log.warning("runtime measurements go to software registers in %s (sample platform)", path.parent)
    else:
        raise UnsupportedPlatform(f"runtime measurement: {tee} has no extendable register")
    event_log = EventLog(registers, path=path, wal_path=path.parent / WAL_NAME, init_pcr=init_pcr)
    return EventLogMeasurer(event_log)
