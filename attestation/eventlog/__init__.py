"""Event logs: TCG2 crypto-agile parsing and replay (CCEL, AAEL) and the
Attestation Agent's runtime-measurement log writer.

For the AA (ExtendRuntimeMeasurement)::

    from attestation.eventlog import EventLog, SoftwareRegisters
    from attestation.tdx.registers import TdxRtmrRegisters
    log = EventLog(TdxRtmrRegisters())          # or SoftwareRegisters(dir) on sample/dev
    log.extend("github.com/confidential-containers", "PullImage",
               '{"image":"<ref>", "digest":"<digest>"}', register_index=None)
"""

from attestation.eventlog.aael import (
    DEFAULT_PCR,
    EVENTLOG_PATH,
    WAL_PATH,
    EventLog,
    build_cc_eventlog,
    encode_aael_record,
)
from attestation.eventlog.errors import EventLogError, EventLogFormatError, EventLogReplayError
from attestation.eventlog.registers import (
    MeasurementRegister,
    SoftwareRegisters,
    tdx_pcr_to_ccmr,
)
from attestation.eventlog.tcg import (
    ParsedEventLog,
    parse_event_log,
)

__all__ = [
    "DEFAULT_PCR",
    "EVENTLOG_PATH",
    "WAL_PATH",
    "EventLog",
    "EventLogError",
    "EventLogFormatError",
    "EventLogReplayError",
    "MeasurementRegister",
    "ParsedEventLog",
    "SoftwareRegisters",
    "build_cc_eventlog",
    "encode_aael_record",
    "parse_event_log",
    "tdx_pcr_to_ccmr",
]
