"""The ``csv`` evidence envelope (trustee's shape)::

{"attestation_report": {"magic": [16], "flags": u32, "data": [4096]},
 "cert_chain": {"pek": <csv-rs Certificate JSON>, "hsk_cek": null},
 "serial_number": [bytes of the chip ID], "cc_eventlog": <base64> | null}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from attestation.csv.certs import CsvCertificate, csv_cert_from_json
from attestation.csv.errors import CsvFormatError
from attestation.csv.report import CsvReport
from coco_common.strict_json import strict_loads

__all__ = ["parse_evidence"]

_CHIP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _bytes(v: Any, what: str, size: int | None = None, limit: int = 8192) -> bytes:
    if not isinstance(v, list) or len(v) > limit or (size is not None and len(v) != size):
        raise CsvFormatError(f"CSV evidence: {what} must be a byte array")
    if not all(type(b) is int and 0 <= b <= 255 for b in v):
        raise CsvFormatError(f"CSV evidence: {what} holds a value that is not a byte")
    return bytes(v)


def parse_evidence(untrusted: Any) -> tuple[CsvReport, CsvCertificate, str, bool]:
    """(report, PEK, chip ID, whether the evidence carries an HSK/CEK)."""
    if isinstance(untrusted, (str, bytes, bytearray)):
        untrusted = strict_loads(untrusted, limit=1 << 20, error=CsvFormatError, what="CSV evidence")
    if (
        not isinstance(untrusted, Mapping)
        or not {"attestation_report", "cert_chain", "serial_number"} <= set(untrusted)
        or set(untrusted) - {"attestation_report", "cert_chain", "serial_number", "cc_eventlog"}
    ):
        raise CsvFormatError("CSV evidence has the wrong members")
    rep, chain = untrusted["attestation_report"], untrusted["cert_chain"]
    if not isinstance(rep, Mapping) or not isinstance(chain, Mapping) or "pek" not in chain:
        raise CsvFormatError("CSV evidence: attestation_report / cert_chain malformed")
    flags = rep.get("flags")
    if type(flags) is not int:
        raise CsvFormatError("CSV evidence: report flags is not an integer")
    report = CsvReport.parse(
        _bytes(rep.get("magic"), "magic", 16), flags, _bytes(rep.get("data"), "data", 4096)
    )
    pek = csv_cert_from_json(chain["pek"])
    serial = _bytes(untrusted["serial_number"], "serial_number", limit=64).rstrip(b"\x00")
    try:
        chip = serial.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CsvFormatError("CSV serial number is not ASCII") from exc
    if not _CHIP_ID.fullmatch(chip):
        raise CsvFormatError("CSV serial number has unexpected characters")
    return report, pek, chip, chain.get("hsk_cek") is not None
