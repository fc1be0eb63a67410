"""The KBS adapter for ``csv`` (Hygon CSV), trustee's evidence shape::

    {"attestation_report": {"magic": [16], "flags": u32, "data": [4096]},
     "cert_chain": {"pek": <csv-rs Certificate JSON>, "hsk_cek": null},
     "serial_number": [bytes of the chip ID], "cc_eventlog": <base64> | null}

Chain: the pinned Hygon root key (HRK, self-signed) → HSK → CEK (Hygon's
per-chip certificates, from ``hsk_cek_dir/<chip ID>/hsk_cek.cert``, trustee's
offline layout; Hygon's KDS is never contacted) → the PEK in the evidence →
the report (SM2/SM3 throughout). Then REPORT_DATA must equal the expected
report data zero-padded to 64 bytes. Init-data is not supported by CSV
(ignored with a warning, as trustee). An HSK/CEK carried inside the evidence
is refused (not parsed here); the event log is not replayed.

Claims: trustee's (``version``, ``policy`` bits, ``user_pubkey_digest``,
``vm_id``, ``vm_version``, ``report_data``, ``mnonce``, ``measure``,
``sig_usage``, ``sig_algo``, ``anonce`` (v1) or ``build``/``rtmr*`` (v2),
``serial_number``).
"""

from __future__ import annotations

import hmac
import logging
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

from attestation._binding import resize
from attestation.csv.certs import CaCertificate, CsvCertificate, pinned_hrk
from attestation.csv.endorsements import load_hsk_cek
from attestation.csv.errors import CsvVerificationError
from attestation.csv.evidence import parse_evidence
from attestation.csv.report import CsvReport
from attestation.csv.verify import verify_chain

__all__ = ["CsvVerifier", "csv_claims"]

log = logging.getLogger(__name__)


def csv_claims(report: CsvReport, chip: str) -> dict[str, Any]:
    p = report.policy
    claims: dict[str, Any] = {
        "version": str(report.version),
        "policy": {
            "nodbg": p & 1,
            "noks": (p >> 1) & 1,
            "es": (p >> 2) & 1,
            "nosend": (p >> 3) & 1,
            "domain": (p >> 4) & 1,
            "csv": (p >> 5) & 1,
            "csv3": (p >> 6) & 1,
            "asid_reuse": (p >> 7) & 1,
            "hsk_version": (p >> 8) & 0xF,
            "cek_version": (p >> 12) & 0xF,
            "api_major": (p >> 16) & 0xFF,
            "api_minor": (p >> 24) & 0xFF,
        },
        "user_pubkey_digest": report.user_pubkey_digest.hex(),
        "vm_id": report.vm_id.hex(),
        "vm_version": report.vm_version.hex(),
        "report_data": report.report_data.hex(),
        "mnonce": report.mnonce.hex(),
        "measure": report.measure.hex(),
        "sig_usage": struct.pack("<I", report.sig_usage).hex(),
        "sig_algo": struct.pack("<I", report.sig_algo).hex(),
        "serial_number": chip,
    }
    if report.version == 1:
        claims["anonce"] = struct.pack("<I", report.anonce).hex()
    else:
        claims["build"] = report.build
        claims["rtmr_version"] = report.rtmr_version
        for i, v in enumerate(report.rtmrs):
            claims[f"rtmr{i}"] = v.hex()
    return claims


class CsvVerifier:
    """:param hsk_cek_dir: folder with ``<chip ID>/hsk_cek.cert`` (HSK 832 bytes + CEK
        2084 bytes, as Hygon's KDS serves them).
    :param hrk: a root certificate replacing the pinned HRK (test PKIs only).
    :param hrk_cert: the same as a file (832 bytes), for the KBS config; logged at WARNING."""

    tee = "csv"

    def __init__(
        self,
        *,
        hsk_cek_dir: str | None = None,
        hrk: CaCertificate | None = None,
        hrk_cert: str | None = None,
    ) -> None:
        self.hsk_cek_dir = Path(hsk_cek_dir) if hsk_cek_dir else None
        if hrk is None and hrk_cert is not None:
            log.warning(
                "CSV verifier trusts the root key in %s instead of Hygon's (test PKIs only)", hrk_cert
            )
            hrk = CaCertificate.from_bytes(Path(hrk_cert).read_bytes())
        self.hrk = hrk if hrk is not None else pinned_hrk()
        if not self.hrk.signed_by(self.hrk):
            raise ValueError("the Hygon root key certificate is not self-signed")

    def verify_chain(self, report: CsvReport, pek: CsvCertificate, chip: str) -> None:
        hsk, cek = load_hsk_cek(self.hsk_cek_dir, chip)
        verify_chain(report, pek, hrk=self.hrk, hsk=hsk, cek=cek)

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        report, pek, chip, has_hsk_cek = parse_evidence(untrusted_evidence)
        if has_hsk_cek:
            raise CsvVerificationError(
                "CSV evidence carrying its own HSK/CEK is not supported; use hsk_cek_dir"
            )
        self.verify_chain(report, pek, chip)
        if not hmac.compare_digest(resize(expected_report_data, 64), report.report_data):
            raise CsvVerificationError("REPORT_DATA is different from that in CSV Quote")
        if expected_init_data_hash is not None:
            log.warning("CSV does not support init data hash mechanism; skipped")
        return csv_claims(report, chip)
