"""Verifier registry of the built-in attestation service: TEE name ->
:class:`attestation.verifier.EvidenceVerifier`.

``sample`` and ``sampledevice`` are implemented here (development TEEs:
their evidence has no signature, only the report-data binding is checked);
they are registered only when asked for (``dev_verifiers``).
``snp``, ``tdx``, ``nvidia``, ``az-snp-vtpm``, ``az-tdx-vtpm``, ``tpm`` (and
the further TEEs listed in ``_LAZY``) come from :mod:`attestation` and are
imported lazily; a TEE without a verifier is refused as unsupported.

Every TEE name has a class: ``cpu`` TEEs may be the primary TEE of an RCAR
session, device TEEs (:data:`DEVICE_TEES`) only appear as additional
evidence next to a CPU TEE."""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.verifier import EvidenceVerifier

from .errors import KbsError

__all__ = [
    "DEVICE_TEES",
    "DEV_TEES",
    "KNOWN_TEES",
    "TEE_CLASS",
    "SampleDeviceVerifier",
    "SampleVerifier",
    "UnsupportedTee",
    "VerifierRegistry",
    "auth_extra_params",
]

log = logging.getLogger(__name__)

#: every Tee name kbs-types 0.18 knows (reference §2.1); others fail /auth
KNOWN_TEES = frozenset(
    {
        "az-snp-vtpm",
        "az-tdx-vtpm",
        "nvidia",
        "sgx",
        "snp",
        "tdx",
        "cca",
        "csv",
        "se",
        "hygondcu",
        "tpm",
        "sample",
        "sampledevice",
        "nvidia-dpu",
    }
)
#: EAR submod class per device TEE (gpu0, switch0, dcu0, ...); any other TEE is class ``cpu``
TEE_CLASS = {"nvidia": "gpu", "sampledevice": "gpu", "hygondcu": "dcu", "nvidia-dpu": "nvidia-dpu"}
#: TEEs that attest a device, not the CPU the workload runs on: never a session's primary TEE
DEVICE_TEES = frozenset(TEE_CLASS)
#: development TEEs: no signature exists on their evidence; their verifiers are off by default
DEV_TEES = frozenset({"sample", "sampledevice"})

_LAZY = {
    "snp": ("attestation.snp.verifier", "SnpVerifier"),
    "tdx": ("attestation.tdx.verifier", "TdxVerifier"),
    "nvidia": ("attestation.nvidia.verifier", "NvidiaVerifier"),
    "az-snp-vtpm": ("attestation.azure.verifier", "AzSnpVtpmVerifier"),
    "az-tdx-vtpm": ("attestation.azure.verifier", "AzTdxVtpmVerifier"),
    "tpm": ("attestation.tpm.verifier", "TpmVerifier"),
    "sgx": ("attestation.sgx.verifier", "SgxVerifier"),
    "cca": ("attestation.cca.verifier", "CcaVerifier"),
    "se": ("attestation.se.verifier", "SeVerifier"),
    "csv": ("attestation.csv.verifier", "CsvVerifier"),
}


class UnsupportedTee(KbsError):
    """No verifier for this TEE in this KBS (answered as trustee's ``AttestationError``)."""

    variant = "AttestationError"


def _sample_fields(untrusted: Any, tee: str) -> tuple[str, str]:
    if not isinstance(untrusted, Mapping):
        raise EvidenceFormatError(f"{tee} evidence must be a JSON object")
    extra = set(untrusted) - {"svn", "report_data"}
    if extra:
        raise EvidenceFormatError(f"{tee} evidence has unknown fields")
    svn, rd = untrusted.get("svn"), untrusted.get("report_data", "")
    if not isinstance(svn, str) or not isinstance(rd, str):
        raise EvidenceFormatError(f"{tee} evidence needs string svn and report_data")
    return svn, rd


def _check_report_data(rd: str, expected: bytes, tee: str) -> None:
    try:
        got = base64.b64decode(rd.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EvidenceFormatError(f"{tee} report_data is not standard base64") from exc
    if got != expected:
        raise VerificationError(f"{tee} report_data does not match the expected runtime data digest")


class SampleVerifier:
    """trustee's ``sample`` verifier: byte-equal report data, fixed claims. No signature exists."""

    tee = "sample"

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        svn, rd = _sample_fields(untrusted_evidence, self.tee)
        _check_report_data(rd, expected_report_data, self.tee)
        claims: dict[str, Any] = {
            "svn": svn,
            "report_data": rd,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        }
        if expected_init_data_hash is not None:
            claims["init_data"] = base64.b64encode(expected_init_data_hash).decode()
        return claims


class SampleDeviceVerifier:
    tee = "sampledevice"

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        svn, rd = _sample_fields(untrusted_evidence, self.tee)
        _check_report_data(rd, expected_report_data, self.tee)
        return {"svn": svn, "report_data": rd}


def auth_extra_params(tee: str, untrusted_params: Any) -> Any:
    """``extra-params`` of the ``/auth`` challenge, as trustee's
    ``generate_extra_params``: for ``se`` with a ``supported-hash-algorithms``
    list, ``{"selected-hash-algorithm": "sha512"}`` (and an error when the
    list lacks sha512); otherwise ``""``."""
    if tee != "se" or not isinstance(untrusted_params, Mapping):
        return ""
    algs = untrusted_params.get("supported-hash-algorithms")
    if algs is None:
        return ""
    if not isinstance(algs, list):
        raise EvidenceFormatError("SE expected a hash algorithm array")
    if "sha512" not in {a.lower() for a in algs if isinstance(a, str)}:
        raise EvidenceFormatError("SE TEE does not support sha512")
    return {"selected-hash-algorithm": "sha512"}


class VerifierRegistry:
    def __init__(
        self,
        verifiers: Mapping[str, EvidenceVerifier] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        dev_verifiers: tuple[str, ...] = (),
    ) -> None:
        """``dev_verifiers``: which unsigned development verifiers (:data:`DEV_TEES`) to enable;
        none by default, so a client with no TEE gets no token."""
        dev: dict[str, EvidenceVerifier] = {
            "sample": SampleVerifier(),
            "sampledevice": SampleDeviceVerifier(),
        }
        unknown = set(dev_verifiers) - DEV_TEES
        if unknown:
            raise ValueError(f"unknown dev verifiers {sorted(unknown)}")
        self._v: dict[str, EvidenceVerifier] = {t: dev[t] for t in dev_verifiers}
        self._v.update(verifiers or {})
        self._options = dict(options or {})
        self.dev_enabled = frozenset(t for t in DEV_TEES if t in self._v)

    def disabled(self, tee: str) -> bool:
        """Whether ``tee`` is a development TEE this registry does not serve."""
        return tee in DEV_TEES and tee not in self._v

    def get(self, tee: str) -> EvidenceVerifier:
        v = self._v.get(tee)
        if v is not None:
            return v
        if tee in DEV_TEES:
            raise UnsupportedTee(f"the dev verifier for tee {tee!r} is not enabled")
        if tee not in _LAZY:
            raise UnsupportedTee(f"no verifier for tee {tee!r}")
        mod_name, cls_name = _LAZY[tee]
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            opts = self._options.get(tee, {})
            made = cls(**opts) if isinstance(opts, Mapping) else cls()
        except Exception as exc:  # a verifier that cannot start makes its TEE unsupported
            log.warning("verifier for %s unavailable: %s", tee, exc)
            raise UnsupportedTee(f"verifier for tee {tee!r} is unavailable") from exc
        if not isinstance(made, EvidenceVerifier):
            raise UnsupportedTee(f"verifier for tee {tee!r} does not fit the EvidenceVerifier contract")
        self._v[tee] = made
        return made

    def supplemental_challenge(self, tee: str, untrusted_params: Any) -> str | None:
        """The ``/auth`` nonce a verifier issues itself (trustee: ``se``, an attestation
        request for the Ultravisor); ``None`` for TEEs that take a random nonce."""
        if tee != "se":
            return None
        gen = getattr(self.get(tee), "generate_challenge", None)
        if gen is None:
            raise UnsupportedTee(f"verifier for tee {tee!r} cannot issue a challenge")
        nonce: str = gen(untrusted_params)
        return nonce
