"""Evidence and policies given as JSON text: nesting past the parser's recursion
limit is a format error of the package, not a bare RecursionError (which would
escape the KBS's ``except AttestationError`` and answer 500)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attestation.errors import AttestationError
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.nvidia.policy import NvidiaPolicy
from attestation.snp.kbs import SnpVerifier
from attestation.snp.policy import SnpPolicy
from attestation.tdx.kbs import TdxVerifier
from attestation.tdx.policy import TdxPolicy

DEEP = "[" * 100_000 + "]" * 100_000
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("verifier", [SnpVerifier(), TdxVerifier(), NvidiaVerifier()], ids=lambda v: v.tee)
@pytest.mark.parametrize("form", [str, str.encode], ids=["str", "bytes"])
def test_deep_evidence_is_a_format_error(
    verifier: SnpVerifier | TdxVerifier | NvidiaVerifier, form: type
) -> None:
    with pytest.raises(AttestationError):
        verifier.verify(form(DEEP), expected_report_data=bytes(48), expected_init_data_hash=None, now=NOW)


@pytest.mark.parametrize("policy", [SnpPolicy, TdxPolicy, NvidiaPolicy], ids=lambda p: p.__name__)
def test_deep_policy_is_a_format_error(policy: type[SnpPolicy | TdxPolicy | NvidiaPolicy]) -> None:
    with pytest.raises(AttestationError):
        policy.from_json(DEEP.encode())
