"""attestation.sample.errors: one root, every class also in its shared category."""

from __future__ import annotations

import attestation.errors as shared
import attestation.sample.errors as errors

CATEGORIES = (
    shared.EvidenceFormatError,
    shared.VerificationError,
    shared.PolicyViolation,
    shared.UnsupportedPlatform,
)


def test_one_root_under_attestation_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert errors.SampleError in classes and issubclass(errors.SampleError, shared.AttestationError)
    for cls in classes:
        assert issubclass(cls, errors.SampleError), cls
        if cls is not errors.SampleError:
            assert any(issubclass(cls, c) for c in CATEGORIES), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from the tree drawing"
