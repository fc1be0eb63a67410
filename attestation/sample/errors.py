"""Errors raised by :mod:`attestation.sample`.

One root, :class:`SampleError`; each class also subclasses the shared
:mod:`attestation.errors` category it belongs to (in brackets)::

    AttestationError
    └── SampleError ................ root of this package
        ├── SampleFormatError ...... (EvidenceFormatError) evidence that is not
        │                            ``{"svn": str, "report_data": std base64}``
        ├── SampleVerificationError  (VerificationError) report data other than expected
        └── SampleUnsupported ...... (UnsupportedPlatform) what a sample TEE cannot do
                                     (bind init-data)

The sample TEEs sign nothing; these errors carry only the evidence's public fields.
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, UnsupportedPlatform, VerificationError

__all__ = ["SampleError", "SampleFormatError", "SampleUnsupported", "SampleVerificationError"]


class SampleError(AttestationError):
    """Root of every error raised by :mod:`attestation.sample`."""


class SampleFormatError(SampleError, EvidenceFormatError):
    """Sample evidence does not have the sample shape."""


class SampleVerificationError(SampleError, VerificationError):
    """Sample evidence carries other report data than the session expects."""


class SampleUnsupported(SampleError, UnsupportedPlatform):
    """An operation the sample TEEs do not have (binding init-data)."""
