"""Where NVIDIA endorsements come from: RIM documents (files, NVIDIA's RIM
service or a mirror, with a small in-memory cache) and OCSP answers for
certificate chains (NVIDIA's responder or a mirror).

The objects here fetch; :mod:`attestation.nvidia.rim` and
:mod:`attestation.nvidia.ocsp` parse and check what they fetch, and
:func:`attestation.nvidia.verify.verify_device` uses them through the
:class:`~attestation.nvidia.verify.RimProvider` and
:class:`~attestation.nvidia.verify.OcspChecker` protocols.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from cryptography import x509

from attestation._net import read_bounded
from attestation.nvidia.errors import NvidiaFormatError, NvidiaVerificationError, RimError
from attestation.nvidia.ocsp import MAX_OCSP_RESPONSE, check_ocsp_response, ocsp_request
from attestation.nvidia.rim import MAX_RIM_SIZE
from attestation.nvidia.spdm import AttestationReport, OpaqueType
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = [
    "DEFAULT_OCSP_URL",
    "DEFAULT_RIM_SERVICE_URL",
    "HttpOcspChecker",
    "RimFiles",
    "RimService",
]

DEFAULT_RIM_SERVICE_URL = "https://rim.attestation.nvidia.com/v1/rim/"
DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"


@dataclass(frozen=True)
class RimFiles:
    """A fixed set of RIM documents; each device uses those for its versions."""

    documents: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for d in self.documents:
            if len(d) > MAX_RIM_SIZE:
                raise NvidiaFormatError(f"RIM is larger than {MAX_RIM_SIZE} bytes")

    def rims_for(self, report: AttestationReport, arch: str) -> Sequence[bytes]:
        return self.documents


@dataclass(frozen=True)
class RimService:
    """NVIDIA's RIM service (or a mirror): GET ``<base_url><id>`` -> ``{"rim": base64}``.

    IDs: ``NV_GPU_DRIVER_GH100_<driver>`` (Hopper),
    ``NV_GPU_CC_DRIVER_GB100_<driver>`` (Blackwell),
    ``NV_GPU_VBIOS_<project>_<sku>_<chip sku>_<VBIOS>`` and
    ``NV_SWITCH_BIOS_<project>_<sku>_<chip sku>_<BIOS>``."""

    client: httpx.Client
    base_url: str = DEFAULT_RIM_SERVICE_URL
    #: RIM documents by ID (RIMs are immutable; each use is re-verified).
    cache: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def rim_ids(report: AttestationReport, arch: str) -> list[str]:
        o = report.opaque
        ids: list[str] = []
        driver = o.driver_version
        if driver and arch == "HOPPER":
            ids.append(f"NV_GPU_DRIVER_GH100_{driver}")
        elif driver and arch == "BLACKWELL":
            ids.append(f"NV_GPU_CC_DRIVER_GB100_{driver}")
        parts = [o.text(OpaqueType.PROJECT), o.text(OpaqueType.PROJECT_SKU), o.text(OpaqueType.CHIP_SKU)]
        vbios = o.vbios_version
        if vbios and all(parts):
            kind = "NV_SWITCH_BIOS" if arch == "LS10" else "NV_GPU_VBIOS"
            ids.append(f"{kind}_{parts[0]}_{parts[1]}_{parts[2]}_{vbios.replace('.', '').upper()}")
        return ids

    def rims_for(self, report: AttestationReport, arch: str) -> Sequence[bytes]:
        out: list[bytes] = []
        for rim_id in self.rim_ids(report, arch):
            cached = self.cache.get(rim_id)
            if cached is None:
                cached = self._fetch(rim_id)
                if len(self.cache) < 256:
                    self.cache[rim_id] = cached
            out.append(cached)
        return out

    def _fetch(self, rim_id: str) -> bytes:
        limit = 2 * MAX_RIM_SIZE
        try:
            with self.client.stream("GET", self.base_url + rim_id) as resp:
                if resp.status_code != 200:
                    raise RimError(f"RIM service has no RIM {rim_id} (HTTP {resp.status_code})")
                body = read_bounded(resp, limit)
                if body is None:
                    raise RimError(f"RIM service answer for {rim_id} is larger than {limit} bytes")
        except httpx.HTTPError as exc:
            raise RimError(f"RIM service unreachable for {rim_id}") from exc
        doc = strict_loads(body, limit=limit, error=RimError, what=f"RIM service answer for {rim_id}")
        if not isinstance(doc, dict) or not isinstance(doc.get("rim"), str):
            raise RimError(f"RIM service answer for {rim_id} has no 'rim' field")
        try:
            return b64_decode(doc["rim"])
        except ValueError as exc:
            raise RimError(f"RIM service answer for {rim_id} is not base64") from exc


@dataclass(frozen=True)
class HttpOcspChecker:
    """Checks certificates against an OCSP responder through an injected httpx
    client: one POST per certificate except the root (and the device leaf, as
    NVIDIA's verifier does); each answer is checked by
    :func:`attestation.nvidia.ocsp.check_ocsp_response`."""

    client: httpx.Client
    url: str = DEFAULT_OCSP_URL
    use_nonce: bool = True
    #: NVIDIA's verifier can tolerate "certificate hold"; off by default.
    allow_hold: bool = False

    def check(
        self, chain: Sequence[x509.Certificate], *, root: x509.Certificate, now: datetime, skip_leaf: bool
    ) -> None:
        certs = list(chain)
        if not certs or certs[-1] != root:
            certs.append(root)
        for i in range(1 if skip_leaf else 0, len(certs) - 1):
            self._check_one(certs[i], certs[i + 1], now)

    def _check_one(self, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        nonce = os.urandom(32) if self.use_nonce else None
        body = ocsp_request(cert, issuer, nonce)
        try:
            with self.client.stream(
                "POST", self.url, content=body, headers={"Content-Type": "application/ocsp-request"}
            ) as resp:
                if resp.status_code != 200:
                    raise NvidiaVerificationError(f"OCSP responder answered HTTP {resp.status_code}")
                content = read_bounded(resp, MAX_OCSP_RESPONSE)
                if content is None:
                    raise NvidiaVerificationError("OCSP response is too large")
        except httpx.HTTPError as exc:
            raise NvidiaVerificationError("OCSP responder unreachable") from exc
        check_ocsp_response(content, cert, issuer, nonce=nonce, now=now, allow_hold=self.allow_hold)
