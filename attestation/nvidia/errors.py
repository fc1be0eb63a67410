"""Errors raised by :mod:`attestation.nvidia`.

One root, :class:`NvidiaError`; each class also subclasses the shared
:mod:`attestation.errors` category it belongs to, so callers that only know
the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── NvidiaError ...................... root of this package
        ├── NvidiaFormatError ............ (EvidenceFormatError) evidence, report, chain,
        │                                  RIM or policy bytes do not parse
        ├── NvidiaVerificationError ...... (VerificationError) not authentic: signature,
        │   │                              chain, FWID, nonce, OCSP status
        │   └── RimError ................. a RIM is unsigned/mis-signed, unavailable,
        │                                  not for this device, or a golden measurement differs
        ├── NvidiaPolicyViolation ........ (PolicyViolation) authentic devices the policy refuses
        ├── NvidiaUnavailable ............ (UnsupportedPlatform) no NVML, no GPU here
        │   └── CcModeDisabled ........... GPUs are present but confidential computing is off
        └── NvmlCallError ................ an NVML call failed on a machine that has NVML

Messages carry only public device data (versions, UUIDs, sizes).
"""

from __future__ import annotations

from attestation.errors import (
    AttestationError,
    EvidenceFormatError,
    PolicyViolation,
    UnsupportedPlatform,
    VerificationError,
)

__all__ = [
    "CcModeDisabled",
    "NvidiaError",
    "NvidiaFormatError",
    "NvidiaPolicyViolation",
    "NvidiaUnavailable",
    "NvidiaVerificationError",
    "NvmlCallError",
    "RimError",
]


class NvidiaError(AttestationError):
    """Root of every error raised by :mod:`attestation.nvidia`."""


class NvidiaFormatError(NvidiaError, EvidenceFormatError):
    """Evidence, an SPDM report, a certificate chain, a RIM or a policy does not parse."""


class NvidiaVerificationError(NvidiaError, VerificationError):
    """Evidence parsed but is not authentic or not bound as expected."""


class RimError(NvidiaVerificationError):
    """A RIM is badly signed, unavailable or not for this device, or a golden measurement differs."""


class NvidiaPolicyViolation(NvidiaError, PolicyViolation):
    """Authentic devices that the appraisal policy does not accept."""


class NvidiaUnavailable(NvidiaError, UnsupportedPlatform):
    """NVML is not installed, or it reports no GPU."""


class CcModeDisabled(NvidiaUnavailable):
    """GPUs are present but confidential computing is off."""


class NvmlCallError(NvidiaError):
    """An NVML call failed on a machine that has NVML."""
