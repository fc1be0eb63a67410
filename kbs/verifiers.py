"""Verifier registry of the built-in attestation service: TEE name ->
:class:`attestation.verifier.EvidenceVerifier`.

Every verifier ships in the wheel and is imported here. Verifiers with a
``[attestation_service.verifier_config.<tee>]`` table are built when the
registry is (a bad table stops the KBS with a :class:`~kbs.errors.KbsConfigError`),
the others on first use with their defaults; a TEE whose verifier needs
configuration it was not given (:data:`NEEDS_CONFIG`) or that has no verifier
is refused as :class:`UnsupportedTee`. ``sample`` and ``sampledevice``
(:mod:`attestation.sample.kbs`, development TEEs: their evidence has no
signature) are registered only when asked for (``dev_verifiers``).

Every TEE name has a class: ``cpu`` TEEs may be the primary TEE of an RCAR
session, device TEEs (:data:`DEVICE_TEES`) only appear as additional
evidence next to a CPU TEE."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attestation.azure.kbs import AzSnpVtpmVerifier, AzTdxVtpmVerifier
from attestation.cca.kbs import CcaVerifier
from attestation.csv.kbs import CsvVerifier
from attestation.errors import AttestationError, EvidenceFormatError
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.sample.kbs import SampleDeviceVerifier, SampleVerifier
from attestation.se.kbs import SeVerifier
from attestation.sgx.kbs import SgxVerifier
from attestation.snp.kbs import SnpVerifier
from attestation.tdx.kbs import TdxVerifier
from attestation.tpm.kbs import TpmVerifier
from attestation.verifier import EvidenceVerifier

from .errors import KbsConfigError, KbsError

__all__ = [
    "DEVICE_TEES",
    "DEV_TEES",
    "KNOWN_TEES",
    "NEEDS_CONFIG",
    "TEE_CLASS",
    "VERIFIERS",
    "UnsupportedTee",
    "VerifierRegistry",
    "auth_extra_params",
]

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

#: TEE -> its verifier, called with the TEE's ``verifier_config`` table as keyword arguments
VERIFIERS: Mapping[str, Callable[..., EvidenceVerifier]] = {
    "snp": SnpVerifier,
    "tdx": TdxVerifier,
    "nvidia": NvidiaVerifier,
    "az-snp-vtpm": AzSnpVtpmVerifier,
    "az-tdx-vtpm": AzTdxVtpmVerifier,
    "tpm": TpmVerifier,
    "sgx": SgxVerifier,
    "cca": CcaVerifier,
    "se": SeVerifier,
    "csv": CsvVerifier,
}
#: TEEs whose verifier cannot run without its ``verifier_config`` table (key material, images)
NEEDS_CONFIG = frozenset({"se"})


class UnsupportedTee(KbsError):
    """No verifier for this TEE in this KBS (none exists, it is a dev TEE not enabled,
    or it needs configuration it was not given); answered as trustee's ``AttestationError``."""

    variant = "AttestationError"


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
        """``verifiers``: ready verifiers by TEE (they win over ``options``).
        ``options``: ``verifier_config`` tables by TEE; each configured verifier is built
        here, so a bad table raises :class:`~kbs.errors.KbsConfigError` at start-up.
        ``dev_verifiers``: which unsigned development verifiers (:data:`DEV_TEES`) to
        enable; none by default, so a client with no TEE gets no token."""
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
        for tee in sorted(self._options.keys() & VERIFIERS.keys() - self._v.keys()):
            self._v[tee] = self._build(tee)
        self.dev_enabled = frozenset(t for t in DEV_TEES if t in self._v)

    def _build(self, tee: str) -> EvidenceVerifier:
        opts = self._options.get(tee, {})
        try:
            return VERIFIERS[tee](**opts) if isinstance(opts, Mapping) else VERIFIERS[tee]()
        except (TypeError, ValueError, OSError, AttestationError) as exc:
            raise KbsConfigError(f"attestation_service.verifier_config.{tee}: {exc}") from exc

    def disabled(self, tee: str) -> bool:
        """Whether ``tee`` is a development TEE this registry does not serve."""
        return tee in DEV_TEES and tee not in self._v

    def get(self, tee: str) -> EvidenceVerifier:
        v = self._v.get(tee)
        if v is not None:
            return v
        if tee in DEV_TEES:
            raise UnsupportedTee(f"the dev verifier for tee {tee!r} is not enabled")
        if tee not in VERIFIERS:
            raise UnsupportedTee(f"no verifier for tee {tee!r}")
        if tee in NEEDS_CONFIG:
            raise UnsupportedTee(
                f"the verifier for tee {tee!r} needs [attestation_service.verifier_config.{tee}]"
            )
        made = self._v[tee] = self._build(tee)
        return made

    def supplemental_challenge(self, tee: str, untrusted_params: Any) -> str | None:
        """The ``/auth`` nonce a verifier issues itself (trustee: ``se``, an attestation
        request for the Ultravisor); ``None`` for TEEs that take a random nonce."""
        if tee != "se":
            return None
        verifier = self.get(tee)
        if not isinstance(verifier, SeVerifier):
            raise UnsupportedTee(f"verifier for tee {tee!r} cannot issue a challenge")
        return verifier.generate_challenge(untrusted_params)
