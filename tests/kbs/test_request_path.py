"""What the KBS request path remembers and shares, and that none of it changes an answer: own
tokens (claims kept, signature and key decoding skipped), usable tee-pubkeys, the policy
worker pool driven from the event loop, the namespaced memory store."""

from __future__ import annotations

import asyncio
import json

import pytest

from kbs import attestation_service
from kbs.attestation_service import usable_tee_key
from kbs.ear import Appraisal, EarBroker, TokenVerifier
from kbs.errors import PolicyEngineError, TokenVerifierError
from kbs.policy_worker import PolicyWorkers
from kbs.storage import MemoryStore
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jwe import TeePubKey

T0 = 1_764_000_000.0
SUB = {"cpu0": Appraisal({"hardware": 2}, {"sample": {"svn": "1"}})}


def test_an_own_token_is_remembered_with_the_claims_verify_gives() -> None:
    broker = EarBroker(duration_min=1)
    tok = broker.issue(SUB, now=T0)
    fresh = TokenVerifier(own_keys=[broker.key.public_key()]).verify(tok, now=T0)
    v = TokenVerifier(own_keys=[broker.key.public_key()])
    v.remember_own(tok, broker.public_jwk)
    assert tok in v._signed
    assert v.verify(tok, now=T0) == fresh
    # the time claims are still checked on every use
    with pytest.raises(TokenVerifierError, match="expired"):
        v.verify(tok, now=T0 + 60 + 61)
    # another string (a tampered signature) is verified in full, and refused
    head, body, sig = tok.split(".")
    forged = f"{head}.{body}.{'A' * len(sig)}"
    with pytest.raises(TokenVerifierError):
        v.verify(forged, now=T0)


def test_a_remembered_token_reads_its_claims_as_strictly_as_a_fresh_one() -> None:
    """The remembered path parses only the claims, with the C parser: a claim set that
    strict JSON refuses (NaN, which json.dumps writes) is refused there too, with the same
    error class, and an ordinary one gives the same dict."""
    from kbs_protocol.jws import sign

    broker = EarBroker()
    v = TokenVerifier(own_keys=[broker.key.public_key()])
    bad = sign(
        {"exp": T0 + 60, "x": float("nan")}, broker.key, alg="ES256", header={"jwk": broker.public_jwk}
    )
    with pytest.raises(TokenVerifierError):
        TokenVerifier(own_keys=[broker.key.public_key()]).verify(bad, now=T0)
    v.remember_own(bad, broker.public_jwk)
    assert bad in v._signed
    with pytest.raises(TokenVerifierError, match="base64url JSON"):
        v.verify(bad, now=T0)
    ok = sign(
        {"exp": T0 + 60, "n": [1, 2.5, None, "\u00e9"]},
        broker.key,
        alg="ES256",
        header={"jwk": broker.public_jwk},
    )
    v.remember_own(ok, broker.public_jwk)
    assert v.verify(ok, now=T0) == TokenVerifier(own_keys=[broker.key.public_key()]).verify(ok, now=T0)


def test_only_tokens_of_a_key_trusted_without_a_chain_are_remembered() -> None:
    """remember_own must not make a verifier accept what it would refuse: without the broker's
    key in own_keys (trust_own_signer = false) the token stays refused."""
    broker = EarBroker()
    tok = broker.issue(SUB, now=T0)
    other = EarBroker()
    strict = TokenVerifier(own_keys=[other.key.public_key()])
    strict.remember_own(tok, broker.public_jwk)
    assert not strict._signed
    with pytest.raises(TokenVerifierError):
        strict.verify(tok, now=T0)
    insecure = TokenVerifier(insecure_header_jwk=True)
    insecure.remember_own(tok, broker.public_jwk)
    assert not insecure._signed  # verified in full each time (it still passes there)
    assert insecure.verify(tok, now=T0)["iss"]


def test_remembered_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from kbs import ear

    monkeypatch.setattr(ear, "_REMEMBER_MAX", 3)
    broker = EarBroker()
    v = TokenVerifier(own_keys=[broker.key.public_key()])
    toks = [broker.issue(SUB, now=T0 + i) for i in range(5)]
    for t in toks:
        v.remember_own(t, broker.public_jwk)
    assert list(v._signed) == toks[2:]
    assert v.verify(toks[0], now=T0)["iat"] == int(T0)  # forgotten: verified in full


def test_usable_key_memo_never_holds_a_refused_key() -> None:
    attestation_service._USABLE_KEYS.clear()
    good = TeePubKey.from_json(TeeKeyPair.generate().public_jwk())
    usable_tee_key(good)
    assert good in attestation_service._USABLE_KEYS
    usable_tee_key(good)  # remembered: no probe
    # a point off the curve: x of one key, y of another
    off = TeePubKey.from_json({**good.to_jwk(), "y": TeeKeyPair.generate().public_jwk()["y"]})
    for _ in range(2):
        with pytest.raises(attestation_service.EvidenceRejected):
            usable_tee_key(off)
    assert off not in attestation_service._USABLE_KEYS


async def test_memory_store_lists_one_namespace() -> None:
    st = MemoryStore()
    await st.set("kbs_protocol_session", "s1", b"x")
    await st.set("reference_value", "rv", b"1")
    await st.set("reference_value", "gone", b"1", ttl_s=-1)
    assert await st.keys("reference_value") == ["rv"]
    assert await st.keys("kbs_protocol_session") == ["s1"]
    assert await st.keys("nothing") == []
    assert await st.delete("reference_value", "rv") and not await st.delete("reference_value", "rv")
    assert await st.purge_expired() == 1 and len(st) == 1


POLICY = "package policy\nimport rego.v1\nallow := input.n\n"
SLOW = (
    "package policy\nimport rego.v1\n"
    "allow if count([x | some x in numbers.range(1, 100000000); x > input.n]) > 0\n"
)


async def test_worker_pool_bounds_and_serves_concurrent_calls() -> None:
    pool = PolicyWorkers(1, timeout_s=30)
    try:
        got = await asyncio.gather(*(pool.evaluate(POLICY, "data.policy", {"n": i}, {}) for i in range(6)))
        assert got == [{"allow": i} for i in range(6)]
        assert len([w for w in pool._all if w.alive()]) == 1  # one worker, the calls queued
    finally:
        await pool.close()


async def test_a_cancelled_waiter_does_not_lose_the_worker() -> None:
    pool = PolicyWorkers(1, timeout_s=2)
    try:
        slow = asyncio.create_task(pool.evaluate(SLOW, "data.policy", {"n": 0}, {}))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(pool.evaluate(POLICY, "data.policy", {"n": 1}, {}))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(PolicyEngineError, match="budget"):
            await slow  # the budget kills the worker
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # the pool still hands its (fresh) worker out
        assert await asyncio.wait_for(pool.evaluate(POLICY, "data.policy", {"n": 2}, {}), 30) == {"allow": 2}
    finally:
        await pool.close()


async def test_a_call_cancelled_mid_evaluation_replaces_its_worker() -> None:
    pool = PolicyWorkers(1, timeout_s=30)
    try:
        assert await pool.evaluate(POLICY, "data.policy", {"n": 0}, {}) == {"allow": 0}
        first = pool._all[0]._proc
        task = asyncio.create_task(pool.evaluate(SLOW, "data.policy", {"n": 0}, {}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not pool._all[0].alive()  # mid-call: killed, never reused half-way
        assert await pool.evaluate(POLICY, "data.policy", {"n": 3}, {}) == {"allow": 3}
        assert pool._all[0]._proc is not first
    finally:
        await pool.close()


def test_the_pool_serves_one_event_loop_after_another() -> None:
    pool = PolicyWorkers(1, timeout_s=30)
    try:
        for i in range(2):
            assert asyncio.run(pool.evaluate(POLICY, "data.policy", {"n": i}, {})) == {"allow": i}
    finally:
        pool.stop()


def _big_init_data(items: int, extra: str = "") -> str:
    inner = "a = [" + ",".join("1" for _ in range(items)) + "]\n" + extra
    return 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = ' + json.dumps(inner) + "\n"


async def test_large_init_data_parsed_in_a_worker_gives_what_the_inline_parse_gives() -> None:
    from kbs.config import SecurityConfig

    limits = SecurityConfig()
    doc = _big_init_data(9000, 'when = "2024-01-01"\n')
    assert len(doc) > attestation_service.INLINE_BODY_BYTES
    want = attestation_service.init_data_claims({"body": doc}, limits)
    pool = PolicyWorkers(1, timeout_s=30)
    try:
        answer = await pool.init_data(doc, limits)
        assert answer[0] == "ok" and (bytes.fromhex(answer[1]), answer[2]) == want
        # a refusal carries its reason; a parse over the element cap is refused there as here
        over = _big_init_data(limits.max_claims_items + 1)
        with pytest.raises(attestation_service.EvidenceRejected) as inline:
            attestation_service.init_data_claims({"body": over}, limits)
        assert await pool.init_data(over, limits) == ["reject", str(inline.value)]
    finally:
        await pool.close()


async def test_an_attest_with_large_init_data_goes_through_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole /attest path with a body over INLINE_BODY_BYTES: the token carries the claims."""
    from datetime import UTC, datetime

    from kbs.policy import AttestationPolicies
    from kbs.rvps import ReferenceValues
    from kbs.verifiers import VerifierRegistry
    from kbs_protocol.jws import decode_unverified
    from tests.kbs.test_api import attest_body

    calls: list[int] = []
    pool = PolicyWorkers(1, timeout_s=30)
    real = pool.init_data

    async def counted(doc: str, limits: object) -> object:
        calls.append(len(doc))
        return await real(doc, limits)

    monkeypatch.setattr(pool, "init_data", counted)
    store = MemoryStore()
    service = attestation_service.AttestationService(
        VerifierRegistry(dev_verifiers=("sample",)), EarBroker(), AttestationPolicies(store, pool),
        ReferenceValues(store),
    )  # fmt: skip
    nonce = "bm9uY2U="
    try:
        body = json.dumps(attest_body(nonce, TeeKeyPair.generate(), init=_big_init_data(9000))).encode()
        token = await service.attest(tee="sample", session_nonce=nonce, hash_algorithm="sha384",
                                     untrusted_body=body, now=datetime.now(UTC))  # fmt: skip
        assert calls and len(body) > attestation_service.INLINE_BODY_BYTES
        ae = decode_unverified(token)[1]["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        assert ae["init_data_claims"]["aa.toml"]["a"] == [1] * 9000
    finally:
        await pool.close()


async def test_policy_workers_run_below_the_server() -> None:
    """A policy burning its time budget must not take the CPU from the event loop: workers run
    WORKER_NICENESS nicer than the server, as batch tasks (no wake-up preemption); both read back from the kernel."""
    import os

    from kbs.policy_worker import WORKER_NICENESS

    pool = PolicyWorkers(1)
    try:
        assert await pool.evaluate(POLICY, "data.policy", {"n": 1}, {}) == {"allow": 1}
        w = pool._all[0]
        pid = w._proc.pid
        want = min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, pid) == want
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH
    finally:
        pool.stop()


async def test_a_worker_killed_between_calls_is_replaced_before_the_next() -> None:
    """alive() sees a worker that died while idle (OOM killer, an operator's kill): the next
    call starts a fresh one instead of failing on the dead socket."""
    import os
    import signal

    pool = PolicyWorkers(1)
    try:
        assert await pool.evaluate(POLICY, "data.policy", {"n": 1}, {}) == {"allow": 1}
        w = pool._all[0]
        old = w._proc.pid
        os.kill(old, signal.SIGKILL)
        for _ in range(200):  # the forkserver reports the exit on the sentinel
            if not w.alive():
                break
            await asyncio.sleep(0.05)
        assert not w.alive()
        assert await pool.evaluate(POLICY, "data.policy", {"n": 2}, {}) == {"allow": 2}
        assert w.alive() and w._proc.pid != old
    finally:
        pool.stop()
