"""Verify NVIDIA GPU / NVSwitch evidence offline, with explicit trust material and time.

Per device:

1. parse the report (SPDM GET_MEASUREMENTS request + MEASUREMENTS response);
2. the device certificate chain links to the NVIDIA device root and every
   certificate is valid at ``now``; the leaf is an "FMC LF" attestation key
   of the claimed architecture;
3. the report signature (ECDSA P-384, raw r||s) verifies with the leaf key
   over request || response-without-signature;
4. the report's FWID (opaque type 20, when present) equals the leaf's DICE FWID;
5. the request nonce equals the expected nonce (when one is given);
6. optional OCSP status of the intermediate certificates;
7. with RIMs: each RIM's XML signature and chain to the RIM root at ``now``,
   the RIM is for this device's driver/VBIOS version, and every active golden
   measurement matches (``measurements_match``; ``None`` without RIMs).

Why not NVIDIA's ``nv-local-gpu-verifier``: it reads the current time and
fetches RIMs/OCSP over the network from global settings, takes evidence only
from its own collector or SDK objects, and reports failures as claims
instead of exceptions; the KBS needs a pure function of (evidence, trust
anchors, time) that fails closed, and the steps above are small.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import httpx
from cryptography import x509

from attestation._net import read_bounded
from attestation.errors import EvidenceFormatError, VerificationError
from attestation.nvidia.certs import (
    arch_of_leaf,
    default_device_root,
    default_rim_root,
    leaf_fwid,
    load_pem_chain,
    verify_chain,
    verify_raw_ecdsa_p384,
)
from attestation.nvidia.evidence import DeviceEvidence, device_nonce, loads_strict, parse_evidence
from attestation.nvidia.ocsp import HttpOcspChecker
from attestation.nvidia.rim import MAX_RIM_SIZE, Rim, RimError, compare_measurements, verify_rim
from attestation.nvidia.spdm import NONCE_SIZE, AttestationReport, OpaqueType

__all__ = [
    "DEFAULT_RIM_SERVICE_URL",
    "NvidiaVerifier",
    "OcspChecker",
    "RimFiles",
    "RimProvider",
    "RimService",
    "TrustAnchors",
    "VerifiedDevice",
    "verify_device",
]

DEFAULT_RIM_SERVICE_URL = "https://rim.attestation.nvidia.com/v1/rim/"
_PRODUCT_ARCH = {"GH": "HOPPER", "GB": "BLACKWELL", "LS": "LS10"}


@dataclass(frozen=True)
class TrustAnchors:
    """The roots a device chain and a RIM signer chain must reach."""

    device_root: x509.Certificate
    rim_root: x509.Certificate

    @classmethod
    def nvidia(cls) -> TrustAnchors:
        """NVIDIA's production roots, shipped with this package."""
        return cls(device_root=default_device_root(), rim_root=default_rim_root())


@runtime_checkable
class RimProvider(Protocol):
    """Where RIM documents come from (files, a RIM service)."""

    def rims_for(self, report: AttestationReport, arch: str) -> Sequence[bytes]:
        """Candidate RIM documents for this device (unverified)."""
        ...


@runtime_checkable
class OcspChecker(Protocol):
    """Revocation check for a verified chain (leaf first, root last)."""

    def check(
        self, chain: Sequence[x509.Certificate], *, root: x509.Certificate, now: datetime, skip_leaf: bool
    ) -> None:
        """Check every certificate of a verified chain (leaf first) except the
        root (and the leaf when ``skip_leaf``); raise VerificationError when one
        is revoked or its status cannot be established."""
        ...


@dataclass(frozen=True)
class RimFiles:
    """A fixed set of RIM documents; each device uses those for its versions."""

    documents: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for d in self.documents:
            if len(d) > MAX_RIM_SIZE:
                raise EvidenceFormatError(f"RIM is larger than {MAX_RIM_SIZE} bytes")

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
        doc = loads_strict(body, limit=limit)
        if not isinstance(doc, dict) or not isinstance(doc.get("rim"), str):
            raise RimError(f"RIM service answer for {rim_id} has no 'rim' field")
        try:
            return base64.b64decode(doc["rim"], validate=True)
        except ValueError as exc:
            raise RimError(f"RIM service answer for {rim_id} is not base64") from exc


@dataclass(frozen=True)
class VerifiedDevice:
    """A device whose report passed every authenticity check."""

    arch: str
    uuid: str | None
    report: AttestationReport
    chain: tuple[x509.Certificate, ...]
    nonce_checked: bool
    fwid_checked: bool
    rims: tuple[Rim, ...] = field(default=())
    #: None without RIMs; True when all active golden measurements matched.
    measurements_match: bool | None = None
    matched_measurements: int = 0

    def measurements_digest(self) -> str:
        """SHA-384 over the measurement values in block order (one value for reference-value policies)."""
        h = hashlib.sha384()
        for _, value in sorted(self.report.measurements().items()):
            h.update(value)
        return h.hexdigest()

    def claims(self, *, verbose: bool = True) -> dict[str, Any]:
        """Claims for this device. ``verbose=False`` gives the compact set the
        KBS puts in tokens (tokens travel in HTTP headers); ``verbose=True``
        adds the nonce, every measurement, the opaque fields and the RIM details."""
        o = self.report.opaque
        fwid = o.fwid
        compact: dict[str, Any] = {
            "arch": self.arch,
            "uuid": self.uuid,
            "driver_version": o.driver_version,
            "vbios_version": o.vbios_version,
            "fwid": fwid.hex() if fwid is not None else None,
            "feature_flag": o.feature_flag,
            "nonce_checked": self.nonce_checked,
            "fwid_checked": self.fwid_checked,
            "measurements_match": self.measurements_match,
            "measurements_sha384": self.measurements_digest(),
            "rim_versions": [r.colloquial_version for r in self.rims],
        }
        if not verbose:
            return compact
        return {
            **compact,
            "nonce": self.report.nonce.hex(),
            "matched_measurements": self.matched_measurements,
            "rims": [
                {
                    "tag_id": r.tag_id,
                    "product": r.product,
                    "edition": r.edition,
                    "version": r.colloquial_version,
                }
                for r in self.rims
            ],
            "measurements": {str(i): v.hex() for i, v in sorted(self.report.measurements().items())},
            "opaque": o.as_claims(),
            "trailing_bytes": self.report.trailing_bytes,
        }


def _read_limited(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise EvidenceFormatError(f"{path} is larger than {limit} bytes")
    return data


def _load_root(path: str) -> x509.Certificate:
    certs = load_pem_chain(_read_limited(path, 64 * 1024))
    if len(certs) != 1:
        raise EvidenceFormatError(f"{path} must hold exactly one root certificate")
    return certs[0]


def _rim_matches_device(rim: Rim, report: AttestationReport, arch: str) -> bool:
    product_arch = _PRODUCT_ARCH.get(rim.product[:2].upper())
    if product_arch != arch:
        return False
    version = rim.colloquial_version.lower()
    o = report.opaque
    return version in {v.lower() for v in (o.driver_version, o.vbios_version) if v}


def _select_rims(
    documents: Sequence[bytes], report: AttestationReport, arch: str, anchors: TrustAnchors, now: datetime
) -> tuple[Rim, ...]:
    verified = [verify_rim(d, root=anchors.rim_root, now=now) for d in documents]
    mine = tuple(r for r in verified if _rim_matches_device(r, report, arch))
    if not mine:
        o = report.opaque
        raise RimError(
            f"none of the {len(verified)} RIMs is for this {arch} device "
            f"(driver {o.driver_version}, VBIOS {o.vbios_version})"
        )
    return mine


def verify_device(
    untrusted: DeviceEvidence,
    *,
    expected_nonce: bytes | None,
    anchors: TrustAnchors,
    now: datetime,
    rims: RimProvider | None = None,
    ocsp: OcspChecker | None = None,
) -> VerifiedDevice:
    """Verify one device's evidence; raise VerificationError / EvidenceFormatError."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = AttestationReport.from_bytes(untrusted.report)
    chain = load_pem_chain(untrusted.cert_chain_pem)
    if not chain:
        raise EvidenceFormatError("device certificate chain is empty")
    verify_chain(chain, root=anchors.device_root, now=now, what="device certificate")
    arch = arch_of_leaf(chain[0])
    if arch != untrusted.arch:
        raise VerificationError(f"evidence says {untrusted.arch} but the certificate is for {arch}")
    try:
        verify_raw_ecdsa_p384(chain[0], report.response.signature, report.signed_bytes)
    except VerificationError as exc:
        raise VerificationError("attestation report signature is invalid") from exc
    report_fwid = report.opaque.fwid
    fwid_checked = False
    if report_fwid is not None:
        cert_fwid = leaf_fwid(chain[0])
        if cert_fwid is None:
            raise VerificationError("report carries an FWID but the leaf certificate has none")
        if cert_fwid != report_fwid:
            raise VerificationError("report FWID does not match the leaf certificate's FWID")
        fwid_checked = True
    if expected_nonce is not None:
        if len(expected_nonce) != NONCE_SIZE:
            raise ValueError("expected_nonce must be 32 bytes")
        if report.nonce != expected_nonce:
            raise VerificationError("report nonce does not match the expected nonce")
    if untrusted.nonce is not None and untrusted.nonce != report.nonce:
        # the SDK shape states its nonce; a disagreement means the entry was altered
        raise VerificationError("evidence 'nonce' field disagrees with the report's nonce")
    if ocsp is not None:
        ocsp.check(chain, root=anchors.device_root, now=now, skip_leaf=True)
    verified_rims: tuple[Rim, ...] = ()
    measurements_match: bool | None = None
    matched = 0
    if rims is not None:
        documents = rims.rims_for(report, arch)
        if documents:
            verified_rims = _select_rims(documents, report, arch, anchors, now)
            if ocsp is not None:
                for r in verified_rims:
                    ocsp.check(r.chain, root=anchors.rim_root, now=now, skip_leaf=False)
            matched = compare_measurements(
                verified_rims, report.measurements(), nvdec0_disabled=report.opaque.nvdec0_disabled
            )
            measurements_match = True
    return VerifiedDevice(
        arch=arch,
        uuid=untrusted.uuid,
        report=report,
        chain=chain,
        nonce_checked=expected_nonce is not None,
        fwid_checked=fwid_checked,
        rims=verified_rims,
        measurements_match=measurements_match,
        matched_measurements=matched,
    )


class NvidiaVerifier:
    """EvidenceVerifier for ``nvidia`` additional evidence (KBS side).

    ``verify`` returns ``{"devices": [<claims per device>, ...]}``; the KBS
    puts each entry in its own EAR submod. Devices cannot bind init-data, so
    ``expected_init_data_hash`` is not checked here (as in trustee)."""

    tee = "nvidia"

    def __init__(
        self,
        *,
        anchors: TrustAnchors | None = None,
        rims: RimProvider | None = None,
        ocsp: OcspChecker | None = None,
        device_root_path: str | None = None,
        rim_root_path: str | None = None,
        rim_files: Sequence[str] = (),
        rim_service_url: str | None = None,
        ocsp_url: str | None = None,
        verbose_claims: bool = False,
    ) -> None:
        """Objects (``anchors``, ``rims``, ``ocsp``) or, for a KBS config file
        (``[attestation_service.verifier_config.nvidia]``), paths and URLs:
        ``device_root_path`` / ``rim_root_path`` (PEM; default the packaged
        NVIDIA roots), ``rim_files`` (RIM documents), ``rim_service_url``
        (e.g. NVIDIA's RIM service) and ``ocsp_url`` (e.g. NVIDIA's responder).
        Without RIMs ``measurements_match`` is null; without OCSP no
        revocation check is made. Claims are the compact set unless
        ``verbose_claims`` (every measurement: ~7 KiB per device)."""
        if anchors is None:
            anchors = TrustAnchors.nvidia()
            if device_root_path or rim_root_path:
                anchors = TrustAnchors(
                    device_root=_load_root(device_root_path) if device_root_path else anchors.device_root,
                    rim_root=_load_root(rim_root_path) if rim_root_path else anchors.rim_root,
                )
        if rims is None and rim_files:
            rims = RimFiles(tuple(_read_limited(p, MAX_RIM_SIZE) for p in rim_files))
        self._client: httpx.Client | None = None
        if (rims is None and rim_service_url) or (ocsp is None and ocsp_url):
            self._client = httpx.Client(timeout=30.0)
        if rims is None and rim_service_url and self._client is not None:
            rims = RimService(client=self._client, base_url=rim_service_url.rstrip("/") + "/")
        if ocsp is None and ocsp_url and self._client is not None:
            ocsp = HttpOcspChecker(client=self._client, url=ocsp_url)
        self._anchors = anchors
        self._rims = rims
        self._ocsp = ocsp
        self._verbose = verbose_claims

    def verify_devices(
        self, untrusted_evidence: Any, *, expected_report_data: bytes, now: datetime
    ) -> list[VerifiedDevice]:
        nonce = device_nonce(expected_report_data)
        devices = parse_evidence(untrusted_evidence)
        return [
            verify_device(
                d, expected_nonce=nonce, anchors=self._anchors, now=now, rims=self._rims, ocsp=self._ocsp
            )
            for d in devices
        ]

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        verified = self.verify_devices(untrusted_evidence, expected_report_data=expected_report_data, now=now)
        return {"devices": [v.claims(verbose=self._verbose) for v in verified]}
