"""Errors raised by :mod:`attestation.csv`.

One root, :class:`CsvError`; a class that belongs to one of the shared
:mod:`attestation.errors` categories subclasses it too, so callers that only
know the shared tree (the KBS, ``coco-verify``) keep working::

    AttestationError
    └── CsvError ......................... root of this package
        ├── CsvFormatError ............... (EvidenceFormatError)
        └── CsvVerificationError ......... (VerificationError)
            └── CsvCertError ............. A Hygon certificate or the report signature does not verify.
"""

from __future__ import annotations

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError

__all__ = [
    "CsvCertError",
    "CsvError",
    "CsvFormatError",
    "CsvVerificationError",
]


class CsvError(AttestationError):
    """Root of every error raised by :mod:`attestation.csv`."""


class CsvFormatError(CsvError, EvidenceFormatError):
    """CSV evidence, report or certificate bytes do not parse."""


class CsvVerificationError(CsvError, VerificationError):
    """CSV evidence parsed but is not authentic or not bound."""


class CsvCertError(CsvVerificationError):
    """A Hygon certificate or the report signature does not verify."""
