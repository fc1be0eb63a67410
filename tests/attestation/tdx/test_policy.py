"""The TDX appraisal policy (:mod:`attestation.tdx.policy`): strict reading and
each rule, on the claims of a real quote."""

from __future__ import annotations

import json
from typing import Any

import pytest

from attestation.errors import EvidenceFormatError, PolicyViolation
from attestation.tdx.errors import TdxFormatError, TdxPolicyViolation
from attestation.tdx.kbs import quote_claims
from attestation.tdx.policy import TdxPolicy
from attestation.tdx.verify import verify_quote

from ._data import FIXED_NOW, Q4, ROOT


def _claims() -> dict[str, Any]:
    return quote_claims(verify_quote(Q4.read_bytes(), root_ca=ROOT, now=FIXED_NOW))


def test_defaults_and_a_full_policy() -> None:
    assert TdxPolicy.from_json("{}") == TdxPolicy()
    c = _claims()
    doc = {
        "allow_debug": True,
        "require_sept_ve_disable": False,
        "accepted_tcb_statuses": ["UpToDate"],
        "rejected_advisories": ["INTEL-SA-00837"],
        "mr_td": ["0x" + c["mr_td"].upper()],
        "rtmr0": [c["rtmr0"], "00" * 48],
    }
    p = TdxPolicy.from_json(json.dumps(doc))
    assert p.allow_debug and not p.require_sept_ve_disable
    assert p.accepted_tcb_statuses == ("UpToDate",) and p.rejected_advisories == ("INTEL-SA-00837",)
    assert dict(p.measurements) == {"mr_td": (c["mr_td"],), "rtmr0": (c["rtmr0"], "00" * 48)}


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ('{"allow_debug": "yes"}', "allow_debug must be a boolean"),
        ('{"allow_debug": 1}', "allow_debug must be a boolean"),
        ('{"mr_td": "abcd"}', "mr_td must be"),
        ('{"rtmr1": [1]}', r"rtmr1\[0\]"),
        ('{"accepted_tcb_statuses": null}', "accepted_tcb_statuses must be"),
        ('{"mrtd": []}', "unknown keys 'mrtd' \\(did you mean 'mr_td'\\?\\); valid keys: "),
        ('{"allow_debug": true, "allow_debug": false}', "duplicate"),
        ("[]", "expected a JSON object"),
    ],
)
def test_bad_policies_are_typed_format_errors(doc: str, match: str) -> None:
    with pytest.raises(TdxFormatError, match=match) as info:
        TdxPolicy.from_json(doc)
    assert isinstance(info.value, EvidenceFormatError)


def test_each_rule_rejects() -> None:
    c = {**_claims(), "debug": False}  # the recorded TD is a debug TD
    lax = TdxPolicy(require_sept_ve_disable=False)
    lax.check(c)
    cases: list[tuple[TdxPolicy, dict[str, Any], str]] = [
        (lax, {**c, "debug": True}, "DEBUG"),
        (TdxPolicy(), {**c, "td_attributes": {**c["td_attributes"], "septve_disable": False}}, "SEPT_VE"),
        (TdxPolicy(require_sept_ve_disable=False, accepted_tcb_statuses=("UpToDate",)), c, "TCB status None"),
        (
            TdxPolicy(require_sept_ve_disable=False, rejected_advisories=("INTEL-SA-1",)),
            {**c, "advisory_ids": ["INTEL-SA-1"]},
            "INTEL-SA-1",
        ),
        (TdxPolicy(require_sept_ve_disable=False, measurements=(("mr_td", ("00" * 48,)),)), c, "mr_td"),
    ]
    for policy, claims, match in cases:
        with pytest.raises(TdxPolicyViolation, match=match) as info:
            policy.check(claims)
        assert isinstance(info.value, PolicyViolation)
