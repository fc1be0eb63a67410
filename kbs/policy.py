"""Rego policies, evaluated with a real Rego engine (regopy):

* the resource policy (package ``policy``, rule ``allow``; input = the
  verified token claims, data = ``{"plugin", "resource-path", "query"}``);
* attestation (EAR) policies per device class (``default_cpu``,
  ``default_gpu``, ...) producing ``trust_claims`` and optional
  ``extensions``, with ``query_reference_value(name)`` backed by the RVPS.

The engine runs in worker processes (:mod:`kbs.policy_worker`): this module's
:func:`evaluate` is what a worker executes. The exact texts of the built-in
``allow_all`` and ``deny_all`` resource policies are decided without a worker, on
input the engine would take as it is (any other text, or input, goes to a worker).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kbs_protocol.policies import builtin_policy

from .ear import TRUST_CLAIMS
from .errors import ParsePolicyError, PolicyEngineError
from .policy_worker import MAX_POLICY_DEPTH, PolicyWorkers, policy_nesting, shared_workers
from .storage import NS_ATTESTATION_POLICY, NS_KBS, KvStore

__all__ = [
    "RESOURCE_POLICY_ID",
    "AttestationPolicies",
    "ResourcePolicy",
    "TrustResult",
    "check_rego",
    "check_rego_inline",
    "evaluate",
    "evaluate_rules",
]

log = logging.getLogger(__name__)

RESOURCE_POLICY_ID = "resource-policy"
MAX_POLICY_BYTES = 1024 * 1024
_RV_MODULE = """package policy

import rego.v1

query_reference_value(id) := v if {
	v := data.reference_values[id]
} else := null
"""


def _interpreter(policy: str, extra: tuple[tuple[str, str], ...] = ()) -> Any:
    from regopy import Interpreter, RegoError

    i = Interpreter()
    try:
        i.add_module("policy.rego", policy)
        for name, text in extra:
            i.add_module(name, text)
    except RegoError as exc:
        raise ParsePolicyError(f"policy is not valid Rego{_rego_where(policy, str(exc))}") from exc
    return i


_REGO_ERROR = re.compile(r"\(error \d+:policy\.rego\|(\d+)\|\d+\s*\(errormsg \d+:([^)\n]{1,200})\)")


def _rego_where(policy: str, err: str) -> str:
    """``: line L, column C: <parser message>`` of the engine's first error in the
    policy (offsets in its error tree), or "" when there is none."""
    m = _REGO_ERROR.search(err)
    if m is None:
        return ""
    off = min(int(m.group(1)), len(policy))
    line = policy.count("\n", 0, off) + 1
    col = off - (policy.rfind("\n", 0, off) + 1) + 1
    return f": line {line}, column {col}: {m.group(2).strip()}"


_CACHE_SIZE = 128


class _Plan:
    """A policy compiled once for one (query, data): rego-cpp's bundle (the engine's own plan,
    run by its VM) and the interpreter that runs it. Only the input changes per request; the
    compile passes, which cost ten times the evaluation of the default CPU policy, run once."""

    __slots__ = ("bundle", "runner")

    def __init__(self, bundle: Any, runner: Any) -> None:
        self.bundle = bundle
        self.runner = runner


_plans: OrderedDict[tuple[str, str, tuple[str, ...], str, bool], _Plan] = OrderedDict()


def _compiled(
    policy: str, query: str, data_json: str, with_reference_values: bool, entrypoints: tuple[str, ...] = ()
) -> _Plan:
    """The plan for ``query`` (or, with ``query`` empty, for ``entrypoints``) over
    (policy, data), from an LRU of :data:`_CACHE_SIZE`."""
    from regopy import Interpreter, RegoError

    key = (policy, query, entrypoints, data_json, with_reference_values)
    plan = _plans.get(key)
    if plan is not None:
        _plans.move_to_end(key)
        return plan
    extra = (("reference_values.rego", _RV_MODULE),) if with_reference_values else ()
    i = _interpreter(policy, extra)
    try:
        i.add_data_json(data_json)
    except RegoError as exc:
        raise PolicyEngineError("policy data rejected") from exc
    try:
        bundle = i.build(query or None, list(entrypoints))
    except RegoError as exc:
        raise PolicyEngineError("policy evaluation failed") from exc
    if not bundle.ok():
        raise PolicyEngineError("policy evaluation failed")
    plan = _plans[key] = _Plan(bundle, Interpreter())
    while len(_plans) > _CACHE_SIZE:
        _plans.popitem(last=False)
    return plan


def _input(doc: Any) -> Any:
    """``regopy.Input(doc)``, built with the engine's own input calls but without regopy's
    per-node ABC checks and string buffers (2-3x faster on a token's claims). Anything other
    than plain JSON types goes to ``regopy.Input`` itself, which decides as before."""
    from regopy import Input, RegoError
    from regopy import rego_shared as lib

    rego = lib.rego
    handle = lib.rego_new_input()
    put_str, put_obj, put_item, put_arr = (
        rego.regoInputString,
        rego.regoInputObject,
        rego.regoInputObjectItem,
        rego.regoInputArray,
    )

    def add(v: Any) -> int:
        t = type(v)
        if t is str:
            return int(put_str(handle, v.encode("utf-8")))
        if t is dict:
            for k, x in v.items():
                if type(k) is not str:
                    raise _NotPlain
                if put_str(handle, k.encode("utf-8")) or add(x) or put_item(handle):
                    return 1
            return int(put_obj(handle, len(v)))
        if t is list:
            for x in v:
                if add(x):
                    return 1
            return int(put_arr(handle, len(v)))
        if t is bool:
            return int(rego.regoInputBoolean(handle, v))
        if t is int:
            return int(rego.regoInputInt(handle, v))
        if t is float:
            return int(rego.regoInputFloat(handle, v))
        if v is None:
            return int(rego.regoInputNull(handle))
        raise _NotPlain

    try:
        failed = add(doc)
    except _NotPlain:
        lib.rego_free_input(handle)
        return Input(doc)
    except BaseException:
        lib.rego_free_input(handle)
        raise
    if failed:
        lib.rego_free_input(handle)
        raise RegoError("Unable to create input", failed)
    out = Input.__new__(Input)
    out._impl = handle  # freed by Input.__del__, as regopy's own
    return out


class _NotPlain(Exception):
    """A value regopy.Input converts itself (sets, other mappings and sequences)."""


def evaluate(
    policy: str,
    query: str,
    input_doc: Any,
    data_doc: Mapping[str, Any],
    *,
    with_reference_values: bool = False,
) -> Any:
    """Evaluate ``query`` in this process and return its JSON value, or None when undefined.
    The input is handed to the engine as a value (linear in its size; the engine's JSON-term
    parser is quadratic in array length)."""
    from regopy import RegoError

    plan = _compiled(policy, query, json.dumps(dict(data_doc), sort_keys=True), with_reference_values)
    try:
        plan.runner.set_input(_input(input_doc))
        out = plan.runner.query_bundle(plan.bundle)
    except RegoError as exc:
        raise PolicyEngineError("policy evaluation failed") from exc
    value = _value(str(out))
    return None if value is _UNDEFINED else value


_UNDEFINED = object()


def _value(text: str) -> Any:
    """The value of the engine's answer text, or :data:`_UNDEFINED`."""
    if text == "undefined":
        return _UNDEFINED
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PolicyEngineError("policy engine answered something unexpected") from exc
    if isinstance(doc, dict) and "errors" in doc:
        raise PolicyEngineError("policy evaluation failed")
    exprs = doc.get("expressions") if isinstance(doc, dict) else None
    if not isinstance(exprs, list) or not exprs:
        return _UNDEFINED
    return exprs[0]


def evaluate_rules(
    policy: str,
    rules: tuple[str, ...],
    input_doc: Any,
    data_doc: Mapping[str, Any],
    *,
    with_reference_values: bool = False,
) -> dict[str, Any]:
    """The value of each ``data.policy.<rule>`` of ``rules`` that is defined, each rule
    evaluated on its own, as trustee's engines do (``eval_rule`` per trust claim rule,
    ``data.policy.allow`` for resources): only those rules and what they use are evaluated,
    not every rule of the package (the default CPU policy: a third of the time). A rule in
    error is an error."""
    from regopy import RegoError

    eps = tuple(f"policy/{r}" for r in rules)
    plan = _compiled(policy, "", json.dumps(dict(data_doc), sort_keys=True), with_reference_values, eps)
    out: dict[str, Any] = {}
    try:
        plan.runner.set_input(_input(input_doc))
        for rule, ep in zip(rules, eps, strict=True):
            value = _value(str(plan.runner.query_bundle_entrypoint(plan.bundle, ep)))
            if value is not _UNDEFINED:
                out[rule] = value
    except RegoError as exc:
        raise PolicyEngineError("policy evaluation failed") from exc
    return out


def check_rego(policy: bytes) -> str:
    """The checks made before the engine sees a policy (size, UTF-8, bracket nesting);
    returns its text."""
    if len(policy) > MAX_POLICY_BYTES:
        raise ParsePolicyError("policy too large")
    try:
        text = policy.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParsePolicyError("policy is not UTF-8") from exc
    depth = policy_nesting(text)
    if depth > MAX_POLICY_DEPTH:
        raise ParsePolicyError(f"policy nests brackets {depth} deep (at most {MAX_POLICY_DEPTH})")
    return text


def check_rego_inline(text: str) -> None:
    """Parse-check a policy in this process (what a worker runs): evaluated on an empty input."""
    evaluate(text, "data.policy", {}, {})


class ResourcePolicy:
    """The single resource policy, stored as ``resource-policy.rego`` in namespace ``kbs``."""

    KEY = RESOURCE_POLICY_ID + ".rego"
    #: ``[compatibility] check_policy_at_upload``
    check_at_upload = True

    def __init__(self, store: KvStore, workers: PolicyWorkers | None = None) -> None:
        self._store = store
        self._workers = workers or shared_workers()

    async def install_default(self) -> None:
        if await self._store.get(NS_KBS, self.KEY) is None:
            await self._store.set(NS_KBS, self.KEY, builtin_policy("default"))

    async def set(self, policy: bytes) -> None:
        text = check_rego(policy)
        if self.check_at_upload:  # [compatibility] check_policy_at_upload = false: stored as trustee does
            await self._workers.check(text)
        await self._store.set(NS_KBS, self.KEY, policy)

    async def list_ids(self) -> list[str]:
        return [k.removesuffix(".rego") for k in await self._store.keys(NS_KBS) if k.endswith(".rego")]

    async def text(self) -> bytes:
        """The policy in force (the built-in default when none was uploaded)."""
        raw = await self._store.get(NS_KBS, self.KEY)
        return raw if raw is not None else builtin_policy("default")

    async def allows(
        self,
        claims: Mapping[str, Any],
        resource_path: list[str],
        query: Mapping[str, Any],
        *,
        plugin: str = "resource",
    ) -> bool:
        raw = await self._store.get(NS_KBS, self.KEY)
        if raw is None:
            raw = builtin_policy("default")
        data = {"plugin": plugin, "resource-path": resource_path, "query": dict(query)}
        known = _constant_outcome(raw, claims, data)
        if known is not None:
            return known
        text = raw.decode("utf-8", "replace")
        result = await self._workers.evaluate_rules(text, ("allow",), dict(claims), data)
        return result.get("allow") is True


@functools.cache
def _constant_policies() -> tuple[bytes, bytes]:
    return builtin_policy("allow_all"), builtin_policy("deny_all")


def _constant_outcome(raw: bytes, claims: Mapping[str, Any], data: Mapping[str, Any]) -> bool | None:
    """The ``allow`` of the exact built-in ``allow_all`` (``data.plugin == "resource"``) or
    ``deny_all`` (never) text, known without the engine; None for any other text. Only when
    the engine could not fail on this input either (:func:`_engine_safe`): otherwise the
    worker evaluates it and fails as before."""
    allow_all, deny_all = _constant_policies()
    if raw != allow_all and raw != deny_all:
        return None
    if not (_engine_safe(dict(claims), 0) and _engine_safe(dict(data), 0)):
        return None
    return raw == allow_all and data.get("plugin") == "resource"


#: deeper documents go to the engine, which decides as before (a recursion limit, say)
_SAFE_DEPTH = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _engine_safe(doc: Any, depth: int) -> bool:
    """True when ``doc`` is plain JSON that :func:`_input` hands to the engine without an
    error (strings UTF-8 without NUL, 64-bit ints, finite floats, string keys) and whose
    JSON text the engine reads as data. One pass over a stack, no call per node."""
    todo: list[tuple[Any, int]] = [(doc, depth)]
    while todo:
        v, d = todo.pop()
        t = type(v)
        if t is str:
            if not (v.isascii() and "\x00" not in v) and not _safe_str(v):
                return False
        elif t is dict:
            if d >= _SAFE_DEPTH:
                return False
            for key, x in v.items():
                if type(key) is not str or not ((key.isascii() and "\x00" not in key) or _safe_str(key)):
                    return False
                todo.append((x, d + 1))
        elif t is list:
            if d >= _SAFE_DEPTH:
                return False
            todo.extend((x, d + 1) for x in v)
        elif t is int:
            if not _INT64_MIN <= v <= _INT64_MAX:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        elif t is not bool and v is not None:
            return False
    return True


def _safe_str(s: str) -> bool:
    if "\x00" in s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


@functools.lru_cache(maxsize=16)
def _builtin_ear_policy(policy_id: str) -> str:
    """A built-in EAR policy's text (read once: package data). As trustee's token broker, a TEE
    class without one (``dcu``, ``nvidia-dpu``) is an error until a policy is uploaded under
    that id. Only ``default_<class>`` ids of the verifier table reach here."""
    f = resources.files("kbs.policies") / f"{policy_id}.rego"
    if f.is_file():
        return f.read_text()
    raise PolicyEngineError(f"no attestation policy {policy_id}: upload one under that id")


@dataclass(frozen=True)
class TrustResult:
    trust_vector: Mapping[str, int]
    extensions: Mapping[str, Any]
    policy_id: str


class AttestationPolicies:
    """EAR policies per device class; uploaded ones override the built-in defaults."""

    #: ``[compatibility] check_policy_at_upload``
    check_at_upload = True

    def __init__(self, store: KvStore, workers: PolicyWorkers | None = None) -> None:
        self._store = store
        self._workers = workers or shared_workers()

    @property
    def workers(self) -> PolicyWorkers:
        """The worker pool this service's evaluations (and large init-data parses) run in."""
        return self._workers

    async def set(self, policy_id: str, policy: bytes) -> None:
        if not policy_id or len(policy_id) > 128 or not all(c.isalnum() or c in "_-." for c in policy_id):
            raise ParsePolicyError("invalid policy id")
        text = check_rego(policy)
        if self.check_at_upload:  # [compatibility] check_policy_at_upload = false: stored as trustee does
            await self._workers.check(text)
        await self._store.set(NS_ATTESTATION_POLICY, policy_id + ".rego", policy)

    async def list_ids(self) -> list[str]:
        return [k.removesuffix(".rego") for k in await self._store.keys(NS_ATTESTATION_POLICY)]

    async def text(self, policy_id: str) -> bytes | None:
        """An uploaded policy, or the built-in one of that id; None when there is neither."""
        raw = await self._store.get(NS_ATTESTATION_POLICY, policy_id + ".rego")
        if raw is not None:
            return raw
        f = resources.files("kbs.policies") / f"{policy_id}.rego"
        return f.read_bytes() if policy_id.replace("_", "").isalnum() and f.is_file() else None

    async def _policy(self, tee_class: str) -> str:
        pid = f"default_{tee_class}"
        raw = await self._store.get(NS_ATTESTATION_POLICY, pid + ".rego")
        if raw is not None:
            return raw.decode("utf-8", "replace")
        return _builtin_ear_policy(pid)

    async def appraise(
        self, tee_class: str, input_doc: Mapping[str, Any], reference_values: Mapping[str, Any]
    ) -> TrustResult:
        text = await self._policy(tee_class)
        data = {"reference_values": dict(reference_values)}
        out: Any = await self._workers.evaluate_rules(
            text, ("trust_claims", "extensions"), dict(input_doc), data, with_reference_values=True
        )
        if not out:  # neither rule: whether the package exists at all decides (an error if not)
            out = await self._workers.evaluate(
                text, "data.policy", dict(input_doc), data, with_reference_values=True
            )
        if not isinstance(out, dict):
            raise PolicyEngineError("attestation policy produced nothing")
        tc = out.get("trust_claims")
        if tc is None:  # as trustee: no trust_claims rule result sets every claim to 0
            tc = dict.fromkeys(TRUST_CLAIMS, 0)
        if not isinstance(tc, dict) or not tc:
            raise PolicyEngineError("attestation policy set no trust_claims")
        vec: dict[str, int] = {}
        for k, v in tc.items():
            if k not in TRUST_CLAIMS:  # rust-ear has no such claim (trustee fails the appraisal too)
                raise PolicyEngineError(f"unknown trust claim {str(k)[:40]!r}")
            if not isinstance(v, int) or isinstance(v, bool) or not -128 <= v <= 127:
                raise PolicyEngineError(f"trust claim {k} is not an i8")
            vec[str(k)] = v
        ext: dict[str, Any] = {}
        for e in out.get("extensions") or []:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                ext[e["name"]] = e.get("value")
        return TrustResult(vec, ext, "default")
