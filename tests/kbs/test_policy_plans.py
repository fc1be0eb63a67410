"""Policies run as compiled plans (rego-cpp bundles, built once per policy and data): every
built-in policy gives, on the inputs the default-policy tables use, exactly what the engine's
interpreter gives on a fresh query, and a plan never outlives its policy or its data."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from kbs import policy as kbs_policy
from kbs.annotated import annotate
from kbs.errors import PolicyEngineError
from kbs.policy import evaluate, evaluate_rules
from kbs_protocol.policies import BUILTIN_POLICIES, builtin_policy
from tests.kbs.test_default_policies import CPU_ROWS, DEVICE_ROWS, SNP

_RV_MODULE = kbs_policy._RV_MODULE


def _interpreted(policy: str, input_doc: Any, data: dict[str, Any], *, rv: bool) -> Any:
    """The reference: a fresh interpreter, the query compiled and run in one go."""
    from regopy import Input, Interpreter

    i = Interpreter()
    i.add_module("policy.rego", policy)
    if rv:
        i.add_module("reference_values.rego", _RV_MODULE)
    i.add_data_json(json.dumps(data, sort_keys=True))
    i.set_input(Input(input_doc))
    text = str(i.query("data.policy"))
    return None if text == "undefined" else json.loads(text)["expressions"][0]


def _ear_policy(cls: str) -> str:
    return (resources.files("kbs.policies") / f"default_{cls}.rego").read_text()


_EAR_CASES = [
    (f"cpu-{r[0]}", "cpu", annotate(r[1], r[2], init_data_claims=None, runtime_data_claims={"nonce": "n"}), r[3])
    for r in CPU_ROWS
] + [
    (f"{r[1]}-{r[0]}", r[1], annotate(r[2], r[3], init_data_claims=None, runtime_data_claims=None), r[4])
    for r in DEVICE_ROWS
]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "annotated", "rvs"), [c[1:] for c in _EAR_CASES], ids=[c[0] for c in _EAR_CASES]
)
def test_ear_policy_plan_matches_the_interpreter(cls: str, annotated: dict[str, Any], rvs: dict[str, Any]) -> None:  # fmt: skip
    text = _ear_policy(cls)
    data = {"reference_values": rvs}
    want = _interpreted(text, annotated, data, rv=True)
    assert want is not None and "trust_claims" in want
    for _ in range(2):  # the first call builds the plan, the second reuses it
        assert evaluate(text, "data.policy", annotated, data, with_reference_values=True) == want


def _claims(status: str, tee: str, *, cpu: bool = True) -> dict[str, Any]:
    sub = {"ear.status": status, "ear.veraison.annotated-evidence": {tee: {"svn": "1"}}}
    return {"submods": {"cpu0" if cpu else "gpu0": sub}, "iat": 1, "exp": 2}


_RESOURCE_INPUTS = [
    _claims("affirming", "snp"),
    _claims("affirming", "sample"),
    _claims("warning", "tdx"),
    _claims("affirming", "snp", cpu=False),
    {"submods": {}},
    {},
]


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_resource_policy_plan_matches_the_interpreter(name: str) -> None:
    text = builtin_policy(name).decode()
    seen = set()
    for plugin in ("resource", "nebula-ca"):
        for claims in _RESOURCE_INPUTS:
            data = {"plugin": plugin, "resource-path": ["default", "key", "k1"], "query": {"a": "b"}}
            want = _interpreted(text, claims, data, rv=False)
            assert evaluate(text, "data.policy", claims, data) == want
            seen.add(json.dumps(want, sort_keys=True))
    if name in ("default", "affirming"):
        assert len(seen) > 1  # the inputs reach both answers


def test_a_plan_follows_its_data_and_policy() -> None:
    """Reference values and resource paths are baked into a plan: a change is a new plan."""
    text = _ear_policy("cpu")
    ann = annotate("snp", SNP, init_data_claims=None, runtime_data_claims=None)
    none = evaluate(text, "data.policy", ann, {"reference_values": {}}, with_reference_values=True)
    rvs = {"snp_launch_measurement": [SNP["measurement"]]}
    known = evaluate(text, "data.policy", ann, {"reference_values": rvs}, with_reference_values=True)
    assert none["executables"] == 33 and known["executables"] == 3
    pol = (
        'package policy\nimport rego.v1\ndefault allow := false\nallow if data["resource-path"][2] == "k1"\n'
    )
    assert evaluate(pol, "data.policy", {}, {"resource-path": ["a", "b", "k1"]}) == {"allow": True}
    assert evaluate(pol, "data.policy", {}, {"resource-path": ["a", "b", "k2"]}) == {"allow": False}
    other = pol.replace('"k1"', '"k2"')
    assert evaluate(other, "data.policy", {}, {"resource-path": ["a", "b", "k2"]}) == {"allow": True}


def test_plan_cache_is_bounded() -> None:
    pol = "package policy\nimport rego.v1\nx := data.n\n"
    for n in range(kbs_policy._CACHE_SIZE + 10):
        assert evaluate(pol, "data.policy", {}, {"n": n}) == {"x": n}
    assert len(kbs_policy._plans) <= kbs_policy._CACHE_SIZE


def test_runtime_errors_stay_engine_errors() -> None:
    """A rule with two values at run time fails the evaluation, as with the interpreter."""
    pol = "package policy\nimport rego.v1\nx := 1 if input.a\nx := 2 if input.b\n"
    assert evaluate(pol, "data.policy", {"a": True}, {}) == {"x": 1}
    with pytest.raises(PolicyEngineError):
        evaluate(pol, "data.policy", {"a": True, "b": True}, {})


@pytest.mark.parametrize(
    ("cls", "annotated", "rvs"), [c[1:] for c in _EAR_CASES], ids=[c[0] for c in _EAR_CASES]
)
def test_ear_rules_match_the_whole_package(cls: str, annotated: dict[str, Any], rvs: dict[str, Any]) -> None:  # fmt: skip
    """The appraisal evaluates trust_claims and extensions only (as trustee, rule by rule):
    the same values as evaluating the whole package."""
    text = _ear_policy(cls)
    data = {"reference_values": rvs}
    want = _interpreted(text, annotated, data, rv=True)
    got = evaluate_rules(text, ("trust_claims", "extensions"), annotated, data, with_reference_values=True)
    assert got == {k: want[k] for k in ("trust_claims", "extensions") if k in want}


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_resource_allow_rule_matches_the_whole_package(name: str) -> None:
    text = builtin_policy(name).decode()
    for plugin in ("resource", "nebula-ca"):
        for claims in _RESOURCE_INPUTS:
            data = {"plugin": plugin, "resource-path": ["default", "key", "k1"], "query": {"a": "b"}}
            want = _interpreted(text, claims, data, rv=False)
            assert evaluate_rules(text, ("allow",), claims, data) == {"allow": want["allow"]}


def test_rules_are_evaluated_one_by_one() -> None:
    """A default false is false (not undefined), an absent rule is left out, a rule in error
    is an error, and an error in a rule not asked for does not matter (trustee's eval_rule)."""
    pol = (
        "package policy\nimport rego.v1\ndefault allow := false\nallow if input.ok\n"
        "x := 1 if input.a\nx := 2 if input.b\n"
    )
    assert evaluate_rules(pol, ("allow", "missing"), {}, {}) == {"allow": False}
    assert evaluate_rules(pol, ("allow",), {"ok": True, "a": True, "b": True}, {}) == {"allow": True}
    with pytest.raises(PolicyEngineError):
        evaluate(pol, "data.policy", {"a": True, "b": True}, {})
    with pytest.raises(PolicyEngineError):
        evaluate_rules(pol, ("x",), {"a": True, "b": True}, {})
    assert evaluate_rules("package other\nallow := true\n", ("allow",), {}, {}) == {}
