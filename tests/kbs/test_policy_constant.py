"""The exact built-in ``allow_all`` and ``deny_all`` resource policies are decided without the
engine: the outcome is the engine's on every input where the engine gives one, the engine (in a
worker) still decides every input it would fail on, and any other text goes to the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kbs.errors import PolicyEngineError
from kbs.policy import ResourcePolicy, _constant_outcome, evaluate_rules
from kbs.storage import NS_KBS, MemoryStore
from kbs_protocol.policies import builtin_policy


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        doc = {"n": doc}
    return doc


_EAR = {
    "submods": {"cpu0": {"ear.status": "affirming", "ear.veraison.annotated-evidence": {"sample": {"x": 1}}}},
    "iat": 1765000000,
    "exp": 1765003600,
    "tee-pubkey": {"kty": "EC", "crv": "P-256", "x": "abc", "y": "déf"},
    "list": [1, 2.5, None, True, False, "", "ü"],
}
#: inputs the engine takes as they are
PLAIN = [{}, _EAR, {"n": -(2**63)}, {"n": 2**63 - 1}, _nested(40)]
#: inputs the plain conversion refuses or the engine may fail on: the worker decides them
ODD = [
    {"n": 2**63},
    {"n": -(2**63) - 1},
    {"s": "\ud800"},
    {"\ud800": 1},
    {"s": "a\x00b"},
    {"f": float("inf")},
    {"f": float("nan")},
    {"t": (1, 2)},
    {1: "int key"},
    _nested(200),
]
DATA = [
    {"plugin": "resource", "resource-path": ["default", "key", "k1"], "query": {}},
    {"plugin": "resource", "resource-path": ["a", "b", "c"], "query": {"q": "é"}},
    {"plugin": "nebula-ca", "resource-path": ["credential"], "query": {"name": "x"}},
]


def _engine(policy: bytes, claims: Any, data: dict[str, Any]) -> bool | str:
    try:
        return evaluate_rules(policy.decode(), ("allow",), claims, data).get("allow") is True
    except Exception:
        return "error"


@pytest.mark.parametrize("name", ["allow_all", "deny_all"])
def test_constant_outcome_is_the_engines(name: str) -> None:
    raw = builtin_policy(name)
    for data in DATA:
        for claims in PLAIN:
            got = _constant_outcome(raw, claims, data)
            assert got is not None, claims
            assert got == _engine(raw, claims, data)
            assert got is (name == "allow_all" and data["plugin"] == "resource")
        for claims in ODD:
            assert _constant_outcome(raw, claims, data) is None, claims
    bad_data = {"plugin": "resource", "resource-path": ["a\ud800"], "query": {}}
    assert _constant_outcome(raw, {}, bad_data) is None


def test_other_policy_texts_are_not_constant() -> None:
    allow_all = builtin_policy("allow_all")
    data = DATA[0]
    for raw in (
        builtin_policy("default"),
        builtin_policy("affirming"),
        allow_all + b"\n",
        allow_all.replace(b'"resource"', b'"resourcE"'),
        b"package policy\n\ndefault allow := true\n",
    ):
        assert _constant_outcome(raw, _EAR, data) is None


class _Workers:
    """Records what reaches the worker pool; answers like the engine would on allow_all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def evaluate_rules(
        self, policy: str, rules: tuple[str, ...], input_doc: Any, data_doc: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(policy)
        try:
            return evaluate_rules(policy, rules, input_doc, data_doc)
        except Exception as exc:
            raise PolicyEngineError("policy evaluation failed") from exc


def test_resource_policy_skips_the_worker_only_for_the_exact_texts() -> None:
    async def go() -> None:
        store = MemoryStore()
        workers = _Workers()
        pol = ResourcePolicy(store, workers)  # type: ignore[arg-type]
        path = ["default", "key", "k1"]
        await store.set(NS_KBS, ResourcePolicy.KEY, builtin_policy("allow_all"))
        assert await pol.allows(_EAR, path, {}) is True
        assert await pol.allows(_EAR, path, {}, plugin="nebula-ca") is False
        assert workers.calls == []
        with pytest.raises(PolicyEngineError):  # an input the engine refuses still fails
            await pol.allows({"s": "\ud800"}, path, {})
        assert len(workers.calls) == 1
        await store.set(NS_KBS, ResourcePolicy.KEY, builtin_policy("deny_all"))
        assert await pol.allows(_EAR, path, {}) is False
        assert len(workers.calls) == 1
        changed = builtin_policy("allow_all") + b"# changed\n"
        await store.set(NS_KBS, ResourcePolicy.KEY, changed)
        assert await pol.allows(_EAR, path, {}) is True
        assert workers.calls[-1] == changed.decode()

    asyncio.run(go())
