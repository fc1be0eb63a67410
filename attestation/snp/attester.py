"""The guest-side SNP attester (``tee = "snp"``), implementing
:class:`attestation.attester.Attester`.

Evidence is exactly what guest-components sends and trustee deserializes::

    {"attestation_report": <virtee/sev serde of the report>,
     "cert_chain": [{"cert_type": "VCEK", "data": [...]}, ...] | null}

``report_data`` (at most 64 bytes) is zero-padded into REPORT_DATA.
:meth:`SnpAttester.bind_init_data` compares HOST_DATA with the init-data
digest resized to 32 bytes (guest-components ``bind_init_data`` for SNP).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from typing import Any

from attestation._binding import resize
from attestation.snp.device import RawReport, ReportSource, default_sources
from attestation.snp.errors import SnpDeviceUnavailable, SnpVerificationError
from attestation.snp.evidence import SnpEvidence, parse_cert_table
from attestation.snp.report import AttestationReport

__all__ = ["SnpAttester"]

log = logging.getLogger(__name__)


class SnpAttester:
    """Collect SNP evidence through configfs-tsm or ``/dev/sev-guest``.

    :param sources: report sources to try in order (default: detected at first
        use — configfs-tsm when present, then ``/dev/sev-guest``).
    :param vmpl: VMPL to request the report for; ``None`` lets the kernel pick
        (configfs-tsm: ``privlevel_floor``; ioctl: VMPL 0, as guest-components does).
    :param fetch_certs: ask for the host's certificate table (extended report).
    """

    tee = "snp"

    def __init__(
        self,
        sources: Sequence[ReportSource] | None = None,
        *,
        vmpl: int | None = None,
        fetch_certs: bool = True,
    ) -> None:
        self._sources = list(sources) if sources is not None else None
        self.vmpl = vmpl
        self.fetch_certs = fetch_certs

    def _get_sources(self) -> list[ReportSource]:
        if self._sources is None:
            self._sources = default_sources()
        if not self._sources:
            raise SnpDeviceUnavailable(
                "no SEV-SNP guest interface (configfs-tsm sev_guest or /dev/sev-guest)"
            )
        return self._sources

    def get_raw_report(self, report_data: bytes) -> RawReport:
        """Blocking: the report bytes (and certificate table) for ``report_data``."""
        last: SnpDeviceUnavailable | None = None
        for src in self._get_sources():
            try:
                return src.get_report(report_data, vmpl=self.vmpl, want_certs=self.fetch_certs)
            except SnpDeviceUnavailable as exc:
                log.info("SNP report source %s failed: %s", src.name, exc)
                last = exc
        assert last is not None
        raise last

    def get_report(self, report_data: bytes) -> SnpEvidence:
        """Blocking: parsed report plus certificates."""
        raw = self.get_raw_report(report_data)
        report = AttestationReport.from_bytes(raw.report)
        certs = parse_cert_table(raw.cert_table) if raw.cert_table else ()
        return SnpEvidence(report, certs or None)

    async def get_evidence(self, report_data: bytes) -> Any:
        evidence = await asyncio.to_thread(self.get_report, report_data)
        return evidence.to_json()

    async def bind_init_data(self, digest: bytes) -> None:
        evidence = await asyncio.to_thread(self.get_report, b"")
        if not hmac.compare_digest(evidence.report.host_data, resize(digest, 32)):
            raise SnpVerificationError("SNP HOST_DATA does not match the init-data digest")
