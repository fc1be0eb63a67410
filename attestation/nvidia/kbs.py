"""The KBS adapter for ``nvidia`` additional evidence: an
:class:`attestation.verifier.EvidenceVerifier` built from a KBS config
section, whose claims go into the token (one EAR submod per device)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
from cryptography import x509

from attestation._files import PEM_LIMIT, read_config_file
from attestation.nvidia.certs import load_pem_chain
from attestation.nvidia.endorsements import HttpOcspChecker, RimFiles, RimService
from attestation.nvidia.errors import NvidiaFormatError
from attestation.nvidia.evidence import device_nonce, parse_evidence
from attestation.nvidia.rim import MAX_RIM_SIZE
from attestation.nvidia.verify import OcspChecker, RimProvider, TrustAnchors, VerifiedDevice, verify_device
from coco_common.http import sync_client

__all__ = ["NvidiaVerifier"]


def _load_root(path: str) -> x509.Certificate:
    certs = load_pem_chain(read_config_file(path, PEM_LIMIT, "NVIDIA root certificate"))
    if len(certs) != 1:
        raise NvidiaFormatError(f"{path} must hold exactly one root certificate")
    return certs[0]


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
            rims = RimFiles(tuple(read_config_file(p, MAX_RIM_SIZE, "NVIDIA RIM") for p in rim_files))
        self._client: httpx.Client | None = None
        if (rims is None and rim_service_url) or (ocsp is None and ocsp_url):
            self._client = sync_client(timeout=30.0, trust_env=True)
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
