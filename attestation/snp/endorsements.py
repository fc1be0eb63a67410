"""VCEK retrieval from AMD's Key Distribution Service, with an on-disk cache.

URL (AMD KDS spec; go-sev-guest ``kds/kds.go``; trustee ``snp/mod.rs``)::

    https://kdsintf.amd.com/vcek/v1/{Milan|Genoa|Turin}/{hwid-hex}?blSPL=NN&teeSPL=NN&snpSPL=NN&ucodeSPL=NN[&fmcSPL=NN]

``hwid`` is the 64-byte CHIP_ID, or its first 8 bytes on Turin (which also
adds ``fmcSPL``). Values are zero-padded to two digits as trustee does.

Network I/O goes through one injected :class:`httpx.Client`; with
``offline=True`` (or no client) only the cache is consulted. A VCEK fetched
from KDS is still verified against the pinned roots like any other: KDS is a
source of certificates, not of trust. Tests use ``httpx.MockTransport`` and
never touch the network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from attestation._net import read_bounded
from attestation.snp.certs import MAX_CERT_FILE, EndorsementCert, ProductRoots, RevocationList
from attestation.snp.errors import (
    CertChainInvalid,
    CertificateFormatError,
    EndorsementKeyUnavailable,
    RevocationListUnavailable,
)
from attestation.snp.report import AttestationReport, Product, SigningKey
from coco_common.files import read_bounded as read_file_bounded
from coco_common.files import write_atomic

__all__ = ["KDS_BASE_URL", "KdsClient", "cache_name", "crl_url", "vcek_url"]

log = logging.getLogger(__name__)

KDS_BASE_URL = "https://kdsintf.amd.com"
_TIMEOUT_S = 30.0
_MAX_SCAN = 256


def _hwid(report: AttestationReport, product: Product) -> bytes:
    return report.chip_id[:8] if product.turin_like else report.chip_id


def _tcb_query(report: AttestationReport, product: Product) -> list[tuple[str, int]]:
    t = report.reported_tcb
    q = [("blSPL", t.bootloader), ("teeSPL", t.tee), ("snpSPL", t.snp), ("ucodeSPL", t.microcode)]
    if product.turin_like:
        q.append(("fmcSPL", t.fmc or 0))
    return q


def _matches(cert: EndorsementCert, report: AttestationReport) -> bool:
    """Cheap pre-selection: same key kind, TCB and (VCEK) chip; verification decides."""
    t = report.reported_tcb
    if cert.kind is not report.key_info.signing_key:
        return False
    if (cert.bootloader, cert.tee, cert.snp, cert.microcode) != (t.bootloader, t.tee, t.snp, t.microcode):
        return False
    if cert.kind is SigningKey.VCEK:
        hwid = cert.hwid or b""
        return hwid == report.chip_id[: len(hwid)]
    return True


def vcek_url(report: AttestationReport, product: Product, *, base_url: str = KDS_BASE_URL) -> str:
    """The KDS URL of the VCEK that should have signed ``report``."""
    query = "&".join(f"{k}={v:02d}" for k, v in _tcb_query(report, product))
    return f"{base_url}/vcek/v1/{product.value}/{_hwid(report, product).hex()}?{query}"


def crl_url(product: Product, *, base_url: str = KDS_BASE_URL) -> str:
    """The KDS URL of the product's CRL (signed by its ARK)."""
    return f"{base_url}/vcek/v1/{product.value}/crl"


def cache_name(report: AttestationReport, product: Product) -> str:
    """File name of the cached VCEK: ``vcek-<product>-<hwid>-<spl...>.der``."""
    spl = "-".join(f"{k}{v}" for k, v in _tcb_query(report, product))
    return f"vcek-{product.value.lower()}-{_hwid(report, product).hex()}-{spl}.der"


@dataclass
class KdsClient:
    """Find the VCEK for a report: on-disk cache first, then (unless offline) AMD KDS.

    ``cache_dir`` may be None (no cache). ``http`` is the only network seam;
    without it the client is offline whatever ``offline`` says.
    """

    cache_dir: Path | None = None
    http: httpx.Client | None = None
    offline: bool = True
    base_url: str = KDS_BASE_URL

    def _products(self, report: AttestationReport) -> Iterable[Product]:
        return [report.product] if report.product is not None else list(Product)

    def cached(self, report: AttestationReport) -> EndorsementCert | None:
        """A cached VCEK/VLEK matching ``report``'s signing key, chip and TCB, if any:
        the KDS cache name first, then any ``*.der``/``*.pem``/``*.crt`` in the folder."""
        if self.cache_dir is None:
            return None
        for p in self._products(report):
            hit = self._read(self.cache_dir / cache_name(report, p))
            if hit is not None and _matches(hit, report):
                return hit
        try:
            names = sorted(os.listdir(self.cache_dir))[:_MAX_SCAN]
        except OSError:
            return None
        for name in names:
            if name.startswith(".") or not name.lower().endswith((".der", ".pem", ".crt", ".cer")):
                continue
            hit = self._read(self.cache_dir / name)
            if hit is not None and _matches(hit, report):
                return hit
        return None

    @staticmethod
    def _read(path: Path) -> EndorsementCert | None:
        """A cached certificate, or None for anything unreadable, oversized or malformed."""
        try:
            return EndorsementCert.from_bytes(read_file_bounded(path, MAX_CERT_FILE))
        except (OSError, ValueError, CertificateFormatError):
            return None

    def _store(self, name: str, der: bytes) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.cache_dir / name, der)

    def _fetch(self, report: AttestationReport, product: Product) -> EndorsementCert | None:
        assert self.http is not None
        url = vcek_url(report, product, base_url=self.base_url)
        try:
            with self.http.stream("GET", url, timeout=_TIMEOUT_S) as resp:
                if resp.status_code == 404:
                    return None
                if resp.status_code != 200:
                    raise EndorsementKeyUnavailable(f"AMD KDS answered HTTP {resp.status_code} for the VCEK")
                body = read_bounded(resp, MAX_CERT_FILE)
                if body is None:
                    raise EndorsementKeyUnavailable("AMD KDS response is too large for a VCEK")
        except httpx.HTTPError as exc:
            raise EndorsementKeyUnavailable(f"AMD KDS is unreachable: {exc.__class__.__name__}") from exc
        try:
            cert = EndorsementCert.from_bytes(body)
        except CertificateFormatError as exc:
            raise EndorsementKeyUnavailable("AMD KDS returned something that is not a VCEK") from exc
        self._store(cache_name(report, product), body)
        return cert

    def get_vcek(self, report: AttestationReport) -> EndorsementCert:
        """The VCEK for ``report`` or :class:`EndorsementKeyUnavailable`."""
        hit = self.cached(report)
        if hit is not None:
            return hit
        if report.key_info.signing_key is SigningKey.VLEK:
            raise EndorsementKeyUnavailable(
                "VLEK-signed reports must carry their VLEK (KDS serves VLEKs to CSPs only)"
            )
        if self.offline or self.http is None:
            raise EndorsementKeyUnavailable(
                "no VCEK given and none cached; supply one (--vcek / cert_chain) or allow KDS fetches"
            )
        for p in self._products(report):
            got = self._fetch(report, p)
            if got is not None:
                return got
        raise EndorsementKeyUnavailable("AMD KDS has no VCEK for this chip and TCB")

    def _crl_from(self, data: bytes, roots: ProductRoots, now: datetime) -> RevocationList | None:
        try:
            crl = RevocationList.from_bytes(data, roots)
        except (CertificateFormatError, CertChainInvalid):
            return None
        if now < crl.last_update or (crl.next_update is not None and now > crl.next_update):
            return None
        return crl

    def get_crl(self, roots: ProductRoots, *, now: datetime) -> RevocationList:
        """A CRL for ``roots.product`` current at ``now``: the cached
        ``crl-<product>.der`` if still current, else (unless offline) AMD KDS."""
        name = f"crl-{roots.product.value.lower()}.der"
        if self.cache_dir is not None:
            try:
                cached = self._crl_from(
                    read_file_bounded(self.cache_dir / name, MAX_CERT_FILE * 4), roots, now
                )
            except (OSError, ValueError):  # absent, unreadable, oversized: fetch instead
                cached = None
            if cached is not None:
                return cached
        if self.offline or self.http is None:
            raise RevocationListUnavailable(
                f"no current {roots.product.value} CRL cached and KDS fetches are off"
            )
        url = crl_url(roots.product, base_url=self.base_url)
        try:
            with self.http.stream("GET", url, timeout=_TIMEOUT_S) as resp:
                if resp.status_code != 200:
                    raise RevocationListUnavailable(f"AMD KDS answered HTTP {resp.status_code} for the CRL")
                body = read_bounded(resp, MAX_CERT_FILE * 4)
        except httpx.HTTPError as exc:
            raise RevocationListUnavailable(f"AMD KDS is unreachable: {exc.__class__.__name__}") from exc
        if body is None:
            raise RevocationListUnavailable("AMD KDS response is too large for a CRL")
        crl = self._crl_from(body, roots, now)
        if crl is None:
            raise RevocationListUnavailable(
                f"AMD KDS returned no current {roots.product.value} CRL signed by its ARK"
            )
        self._store(name, body)
        return crl
