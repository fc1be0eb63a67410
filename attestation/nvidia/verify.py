"""Verify NVIDIA GPU / NVSwitch evidence offline, with explicit trust material
and time (authenticity; returns :class:`VerifiedDevice`).

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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cryptography import x509

from attestation.nvidia.certs import (
    arch_of_leaf,
    default_device_root,
    default_rim_root,
    leaf_fwid,
    load_pem_chain,
    verify_chain,
    verify_raw_ecdsa_p384,
)
from attestation.nvidia.errors import NvidiaFormatError, NvidiaVerificationError, RimError
from attestation.nvidia.evidence import DeviceEvidence
from attestation.nvidia.rim import Rim, compare_measurements, verify_rim
from attestation.nvidia.spdm import NONCE_SIZE, AttestationReport

__all__ = [
    "OcspChecker",
    "RimProvider",
    "TrustAnchors",
    "VerifiedDevice",
    "verify_device",
]

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
        raise NvidiaFormatError("device certificate chain is empty")
    verify_chain(chain, root=anchors.device_root, now=now, what="device certificate")
    arch = arch_of_leaf(chain[0])
    if arch != untrusted.arch:
        raise NvidiaVerificationError(f"evidence says {untrusted.arch} but the certificate is for {arch}")
    try:
        verify_raw_ecdsa_p384(chain[0], report.response.signature, report.signed_bytes)
    except NvidiaVerificationError as exc:
        raise NvidiaVerificationError("attestation report signature is invalid") from exc
    report_fwid = report.opaque.fwid
    fwid_checked = False
    if report_fwid is not None:
        cert_fwid = leaf_fwid(chain[0])
        if cert_fwid is None:
            raise NvidiaVerificationError("report carries an FWID but the leaf certificate has none")
        if cert_fwid != report_fwid:
            raise NvidiaVerificationError("report FWID does not match the leaf certificate's FWID")
        fwid_checked = True
    if expected_nonce is not None:
        if len(expected_nonce) != NONCE_SIZE:
            raise ValueError("expected_nonce must be 32 bytes")
        if report.nonce != expected_nonce:
            raise NvidiaVerificationError("report nonce does not match the expected nonce")
    if untrusted.nonce is not None and untrusted.nonce != report.nonce:
        # the SDK shape states its nonce; a disagreement means the entry was altered
        raise NvidiaVerificationError("evidence 'nonce' field disagrees with the report's nonce")
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
