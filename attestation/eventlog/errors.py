"""Errors raised by :mod:`attestation.eventlog`.

One root, :class:`EventLogError`; the parse and replay errors also subclass
the shared :mod:`attestation.errors` category they belong to (in brackets)::

    AttestationError
    └── EventLogError .............. root of this package; raised itself when the
        │                            AAEL could not be written or recovered
        ├── EventLogFormatError .... (EvidenceFormatError) bytes that are not a TCG2
        │                            crypto-agile log (CCEL, AAEL)
        └── EventLogReplayError .... (VerificationError) a log that does not replay
                                     to the reported register values
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError

__all__ = ["EventLogError", "EventLogFormatError", "EventLogReplayError"]


class EventLogError(AttestationError):
    """Root of every error raised by :mod:`attestation.eventlog`; also: the AAEL
    could not be written or recovered."""


class EventLogFormatError(EventLogError, EvidenceFormatError):
    """The event log bytes are not a valid TCG2 crypto-agile log."""


class EventLogReplayError(EventLogError, VerificationError):
    """The event log does not replay to the reported register values."""
