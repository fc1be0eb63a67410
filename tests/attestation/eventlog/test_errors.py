"""attestation.eventlog.errors: one root, every class also in its shared category."""

from __future__ import annotations

import attestation.errors as shared
import attestation.eventlog.errors as errors

CATEGORIES = (
    shared.EvidenceFormatError,
    shared.VerificationError,
    shared.PolicyViolation,
    shared.UnsupportedPlatform,
)


def test_one_root_under_attestation_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert errors.EventLogError in classes and issubclass(errors.EventLogError, shared.AttestationError)
    for cls in classes:
        assert issubclass(cls, errors.EventLogError), cls
        if cls is not errors.EventLogError:
            assert any(issubclass(cls, c) for c in CATEGORIES), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from the tree drawing"
