"""Regression tests for the adversarial findings F01-F09 against the KBS:
TEE classes, bounded work and state per request, policies that cannot take
the server down, ACLs on the routed path, one nonce one attestation, and no
unhandled errors."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from kbs.app import build_state
from kbs.config import parse_config
from kbs.errors import KbsConfigError
from kbs.policy_worker import PolicyWorkers, policy_nesting
from kbs.storage import LocalFsStore
from kbs.verifiers import DEV_TEES, DEVICE_TEES, KNOWN_TEES
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from kbs_protocol.jws import decode_unverified
from kbs_protocol.policies import builtin_policy

from .conftest import Kbs, admin_material, config_doc, start
from .test_api import attest_body, do_attest, etype, handshake

ERR = "https://github.com/confidential-containers/kbs/errors/"
#: the statuses trustee's KBS answers with
TRUSTEE_STATUSES = {200, 401, 404}


@pytest.fixture
async def make_kbs(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[Kbs, TestServer]] = []

    async def _make(name: str = "k", **over: Any) -> Kbs:
        d = tmp_path / name
        d.mkdir()
        k, server = await start(d, **over)
        made.append((k, server))
        return k

    yield _make
    for k, server in made:
        await server.close()
        for c in k.state.closers:
            await c()


def problem(r: httpx.Response) -> str:
    """The RFC 7807 error type of a trustee-style refusal (asserts the body's shape)."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    return etype(r)


async def attested(http: httpx.AsyncClient, kbs: Kbs, tee: str = "sample") -> tuple[str, str, TeeKeyPair]:
    sid, nonce = await handshake(http, kbs.url, tee)
    key = TeeKeyPair.generate()
    r = await do_attest(http, kbs.url, sid, attest_body(nonce, key))
    assert r.status_code == 200, r.text
    return sid, str(r.json()["token"]), key


# --- F01: TEE classes -------------------------------------------------------------------------


async def test_f01_device_tees_are_refused_as_primary(kbs: Kbs, http: httpx.AsyncClient) -> None:
    for tee in sorted(DEVICE_TEES):
        r = await http.post(
            f"{kbs.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""}
        )
        assert r.status_code == 401 and problem(r) == "AttestationError", tee
        assert "device TEE" in r.json()["detail"]


async def test_f01_sampledevice_as_primary_gets_nothing(kbs: Kbs, http: httpx.AsyncClient) -> None:
    """The finding: sampledevice as the CPU TEE passed the default policy. Now it gets no
    session, and a token that names it at cpu0 is refused by the default policy."""
    await kbs.seed(http, "default/key/k1", b"PROD-REGISTRY-PASSWORD")
    r = await http.post(f"{kbs.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sampledevice",
                                                        "extra-params": ""})  # fmt: skip
    assert r.status_code == 401
    pol = kbs.state.resource_policy
    for dev in sorted(DEV_TEES):
        claims = {"submods": {"cpu0": {"ear.status": "affirming",
                                       "ear.veraison.annotated-evidence": {dev: {"svn": "1"}}}}}  # fmt: skip
        assert not await pol.allows(claims, ["default", "key", "k1"], {})


async def test_f01_dev_verifiers_are_off_unless_configured(make_kbs: Any, http: httpx.AsyncClient) -> None:
    secure = await make_kbs("secure", security={})
    for tee in ("sample", "sampledevice"):
        r = await http.post(
            f"{secure.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""}
        )
        assert r.status_code == 401 and problem(r) == "AttestationError", tee
    # one enabled, the other still off
    only = await make_kbs("only", security={"dev_verifiers": ["sample"]})
    await attested(http, only)
    sid, nonce = await handshake(http, only.url)
    key = TeeKeyPair.generate()
    dev_rd = hash_canonical("sha384", {"nonce": nonce, "tee-pubkey": key.public_jwk()})
    add = json.dumps({"sampledevice": sample_evidence(dev_rd)})
    r = await do_attest(http, only.url, sid, attest_body(nonce, key, additional=add))
    assert r.status_code == 401


async def test_f01_dev_verifiers_warn_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, pub = admin_material(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kbs"):
        st = await build_state(parse_config(config_doc(tmp_path, pub), str(tmp_path)))
    for c in st.closers:
        await c()
    assert any("INSECURE: the unsigned development verifiers" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kbs"):
        st = await build_state(parse_config(config_doc(tmp_path, pub, security={}), str(tmp_path)))
    for c in st.closers:
        await c()
    assert not any("development verifiers" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("security", "msg"),
    [({"dev_verifiers": ["snp"]}, "unknown dev verifier"), ({"max_sessions": 0}, "positive"),
     ({"nonsense": 1}, "unknown field"), ({"policy_timeout_s": 0}, "policy_timeout_s")],
)  # fmt: skip
def test_security_section_is_strict(tmp_path: Path, security: dict[str, Any], msg: str) -> None:
    _, pub = admin_material(tmp_path)
    with pytest.raises(KbsConfigError, match=msg):
        parse_config(config_doc(tmp_path, pub, security=security))


async def test_f01_no_tee_without_a_signed_verifier_gets_a_default_policy_resource(
    kbs: Kbs, http: httpx.AsyncClient
) -> None:
    """Every TEE name the KBS knows, with the dev verifiers switched on (the worst case) and
    reference values that make the sample TEE affirming: under the default resource policy no
    client that can only produce unsigned (sample-format) evidence gets a resource."""
    await kbs.seed(http, "default/key/k1", b"s3cret")
    await kbs.policy(http, "default")
    body = {"version": "0.1.0", "type": "sample", "payload": base64.b64encode(json.dumps(
        {"svn": ["1"], "launch_digest": ["abcde"], "major_version": 1, "minimum_minor_version": 1,
         "device_svn": ["2"]}).encode()).decode()}  # fmt: skip
    r = await http.post(f"{kbs.url}/kbs/v0/reference-value", json=body, headers=kbs.admin_headers())
    assert r.status_code == 200, r.text
    tokens = 0
    for tee in sorted(KNOWN_TEES):
        r = await http.post(
            f"{kbs.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""}
        )
        if tee in DEVICE_TEES:
            assert r.status_code == 401, tee
            continue
        if r.status_code != 200:  # e.g. se: its verifier needs a supplemental challenge request
            assert r.status_code == 401 and problem(r) == "AttestationError", tee
            continue
        sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
        http.cookies.clear()
        key = TeeKeyPair.generate()
        dev_rd = hash_canonical("sha384", {"nonce": nonce, "tee-pubkey": key.public_jwk()})
        for add in ("", json.dumps({"sampledevice": sample_evidence(dev_rd) | {"svn": "2"}})):
            r = await do_attest(http, kbs.url, sid, attest_body(nonce, key, additional=add))
            if r.status_code != 200:
                assert r.status_code == 401 and problem(r) == "AttestationError", tee
                continue
            assert tee in DEV_TEES, f"unsigned evidence attested as {tee}"
            tok = r.json()["token"]
            _, claims = decode_unverified(tok)
            assert claims["submods"]["cpu0"]["ear.status"] == "affirming"  # the policy alone decides
            tokens += 1
            g = await http.get(f"{kbs.url}/kbs/v0/resource/default/key/k1",
                               headers={"Authorization": f"Bearer {tok}"})  # fmt: skip
            assert g.status_code == 401 and problem(g) == "PolicyDeny", tee
    assert tokens >= 1  # the sample TEE did get tokens: the refusal is the policy's


async def test_default_policy_wants_every_submod_affirming(kbs: Kbs) -> None:
    pol = kbs.state.resource_policy

    def sub(tee: str, status: str = "affirming") -> dict[str, Any]:
        return {"ear.status": status, "ear.veraison.annotated-evidence": {tee: {"x": 1}}}

    path = ["a", "b", "c"]
    assert await pol.allows({"submods": {"cpu0": sub("snp")}}, path, {})
    assert await pol.allows({"submods": {"cpu0": sub("tdx"), "gpu0": sub("nvidia")}}, path, {})
    assert not await pol.allows({"submods": {"cpu0": sub("snp", "warning")}}, path, {})
    assert not await pol.allows({"submods": {"cpu0": sub("snp"), "gpu0": sub("nvidia", "none")}}, path, {})
    assert not await pol.allows({"submods": {"gpu0": sub("nvidia")}}, path, {})  # no CPU TEE
    assert not await pol.allows({"submods": {"cpu0": sub("snp"), "gpu0": sub("sampledevice")}}, path, {})
    assert not await pol.allows({}, path, {})


# --- F07 / F04: bounded work and bounded tokens -----------------------------------------------


async def test_f07_init_data_claims_are_bounded(kbs: Kbs, http: httpx.AsyncClient) -> None:
    """The finding's request: init-data whose aa.toml holds a long array (~200 KB). Refused
    before any policy sees it (over the element cap); the KBS keeps serving."""
    inner = "a = [" + ",".join(str(i) for i in range(30000)) + "]\n"
    toml = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = ' + json.dumps(inner) + "\n"
    sid, nonce = await handshake(http, kbs.url)
    r = await do_attest(http, kbs.url, sid, attest_body(nonce, TeeKeyPair.generate(), init=toml))
    assert r.status_code == 401 and problem(r) == "AttestationError"
    assert (await http.get(f"{kbs.url}/healthz")).status_code == 200


async def test_f07_oversize_evidence_and_init_data_are_refused(
    make_kbs: Any, http: httpx.AsyncClient
) -> None:
    k = await make_kbs(security={"dev_verifiers": ["sample"], "max_evidence_bytes": 4096,
                                 "max_init_data_bytes": 1024, "max_claims_depth": 8})  # fmt: skip
    key = TeeKeyPair.generate()
    sid, nonce = await handshake(http, k.url)
    body = attest_body(nonce, key, additional="x" * 5000)
    assert (await do_attest(http, k.url, sid, body)).status_code == 401
    toml = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\nk = "' + "v" * 2000 + '"\n'
    assert (await do_attest(http, k.url, sid, attest_body(nonce, key, init=toml))).status_code == 401
    deep = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = "a = ' + "[" * 12 + "]" * 12 + '"\n'
    assert (await do_attest(http, k.url, sid, attest_body(nonce, key, init=deep))).status_code == 401
    # within the limits the same session still attests
    assert (await do_attest(http, k.url, sid, attest_body(nonce, key))).status_code == 200


async def test_f04_tokens_carry_bounded_copies_of_unsigned_input(
    make_kbs: Any, kbs: Kbs, http: httpx.AsyncClient
) -> None:
    """A 300 KB sample svn used to be copied verbatim into the token (and the session)."""
    sid, nonce = await handshake(http, kbs.url)
    key = TeeKeyPair.generate()
    body = attest_body(nonce, key)
    body["tee-evidence"]["primary_evidence"]["svn"] = "9" * 300_000
    r = await do_attest(http, kbs.url, sid, body)
    assert r.status_code == 200, r.text
    tok = r.json()["token"]
    assert len(tok) < 16 * 1024
    _, claims = decode_unverified(tok)
    assert claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["sample"]["svn"].startswith("sha384:")
    # and a token over the configured cap is never issued
    small = await make_kbs(security={"dev_verifiers": ["sample"], "max_token_bytes": 1024})
    sid, nonce = await handshake(http, small.url)
    r = await do_attest(http, small.url, sid, attest_body(nonce, key))
    assert r.status_code == 401 and problem(r) == "AttestationError"


# --- F06 / F07: policy evaluation off the event loop, with a budget ---------------------------

EXPENSIVE = """package policy

import rego.v1

default allow := false

allow if {
	input.submods
	count([x | some x in numbers.range(1, 40000000); x > input.iat]) > 0
}
"""


async def test_f06_expensive_policy_neither_blocks_the_server_nor_runs_forever(
    make_kbs: Any, http: httpx.AsyncClient
) -> None:
    k = await make_kbs(security={"dev_verifiers": ["sample"], "policy_timeout_s": 2})
    await k.seed(http, "default/key/k1", b"v")
    await k.policy(http, EXPENSIVE)  # cheap on the empty input of the upload check
    _, tok, _ = await attested(http, k)
    get = asyncio.create_task(
        http.get(f"{k.url}/kbs/v0/resource/default/key/k1", headers={"Authorization": f"Bearer {tok}"})
    )
    await asyncio.sleep(0.2)  # the GET is in the policy engine now
    async with httpx.AsyncClient(timeout=30) as other:
        h = await other.get(f"{k.url}/healthz")
    assert h.status_code == 200
    assert not get.done(), "healthz was answered only after the policy evaluation"
    r = await get
    assert r.status_code == 401 and problem(r) == "PolicyEngineError"
    # the worker that was killed is replaced (not the exact allow_all text: that one is known
    # without the engine)
    await k.policy(http, builtin_policy("allow_all").decode() + "# evaluated by the engine\n")
    r = await http.get(f"{k.url}/kbs/v0/resource/default/key/k1", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200


# --- F05: policies cannot crash the server ----------------------------------------------------


def _b64(s: str) -> str:
    return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()


async def test_f05_deeply_nested_policy_is_a_parse_error(kbs: Kbs, http: httpx.AsyncClient) -> None:
    for depth in (1500, 5000):
        rego = "package policy\n\nx := " + "[" * depth + "1" + "]" * depth + "\n"
        for ep, body in (("resource-policy", {"policy": _b64(rego)}),
                         ("attestation-policy", {"policy_id": "default_cpu", "policy": _b64(rego)})):  # fmt: skip
            r = await http.post(f"{kbs.url}/kbs/v0/{ep}", json=body, headers=kbs.admin_headers())
            assert r.status_code == 401 and problem(r) == "ParsePolicyError", (depth, ep)
    assert (await http.get(f"{kbs.url}/healthz")).status_code == 200
    assert await kbs.state.store.get("kbs", "resource-policy.rego") == builtin_policy("default")


def test_policy_nesting_ignores_strings_and_comments() -> None:
    assert policy_nesting('x := [{"a": (1)}]') == 3
    assert policy_nesting('x := "[[[[\\"[[[" # [[[[\ny := `[[[[`') == 0
    assert policy_nesting("[" * 70) == 70


async def test_f05_an_engine_crash_is_contained_in_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the static depth check (switched off here), a policy that segfaults rego-cpp kills
    only its worker: ParsePolicyError, and the next call gets a fresh worker."""
    from kbs import policy_worker
    from kbs.errors import ParsePolicyError

    monkeypatch.setattr(policy_worker, "MAX_POLICY_DEPTH", 10**6)
    w = PolicyWorkers(1, timeout_s=60)
    try:
        deep = "package policy\n\nx := " + "[" * 5000 + "1" + "]" * 5000 + "\n"
        with pytest.raises(ParsePolicyError, match="died"):
            await w.check(deep)
        assert await w.evaluate("package policy\n\nallow := true\n", "data.policy", {}, {}) == {"allow": True}
    finally:
        await w.close()


async def test_f09_recursive_policy_is_a_parse_error(kbs: Kbs, http: httpx.AsyncClient) -> None:
    rego = "package policy\n\nx := y\ny := x\n"
    r = await http.post(
        f"{kbs.url}/kbs/v0/resource-policy", json={"policy": _b64(rego)}, headers=kbs.admin_headers()
    )
    assert r.status_code == 401 and problem(r) == "ParsePolicyError"


# --- F03: bounded sessions --------------------------------------------------------------------


async def test_f03_session_cap_evicts_unattested_sessions_only(
    make_kbs: Any, http: httpx.AsyncClient
) -> None:
    k = await make_kbs(security={"dev_verifiers": ["sample"], "max_sessions": 4})
    await k.seed(http, "default/key/k1", b"v")
    await k.policy(http, "allow_all")
    first_pending = await handshake(http, k.url)
    good = [await attested(http, k) for _ in range(2)]
    for _ in range(20):  # a flood of /auth
        await handshake(http, k.url)
    assert k.state.sessions.live == 4
    for sid, _, _ in good:  # attested sessions survive the flood
        r = await http.get(
            f"{k.url}/kbs/v0/resource/default/key/k1", headers={"Cookie": f"kbs-session-id={sid}"}
        )
        assert r.status_code == 200
    sid, nonce = first_pending  # the oldest pending one was evicted
    r = await do_attest(http, k.url, sid, attest_body(nonce, TeeKeyPair.generate()))
    assert r.status_code == 401
    # all slots attested: /auth is refused rather than evicting an attested session
    await attested(http, k)
    await attested(http, k)
    r = await http.post(
        f"{k.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
    )
    assert r.status_code == 401 and problem(r) == "AttestationError"


async def test_f03_sweeper_reads_only_expired_session_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = LocalFsStore(str(tmp_path))
    for i in range(30):
        await st.set("kbs_protocol_session", f"live{i}", b"x" * 100, ttl_s=300)
    for i in range(3):
        await st.set("kbs_protocol_session", f"dead{i}", b"x", ttl_s=0.001)
    await asyncio.sleep(0.05)
    opened: list[str] = []
    real = LocalFsStore._ttl_live

    def counting(self: LocalFsStore, p: Path) -> bool:
        opened.append(p.name)
        return real(self, p)

    monkeypatch.setattr(LocalFsStore, "_ttl_live", counting)
    assert await st.purge_expired() == 3
    assert sorted(opened) == ["dead0", "dead1", "dead2"]
    assert len(await st.keys("kbs_protocol_session")) == 30


# --- F08: one nonce, one attestation ----------------------------------------------------------


async def test_f08_concurrent_attests_on_one_session_yield_one_token(
    kbs: Kbs, http: httpx.AsyncClient
) -> None:
    sid, nonce = await handshake(http, kbs.url)
    bodies = [attest_body(nonce, TeeKeyPair.generate()) for _ in range(16)]
    async with httpx.AsyncClient(timeout=60) as c:
        rs = await asyncio.gather(*(
            c.post(f"{kbs.url}/kbs/v0/attest", content=json.dumps(b).encode(),
                   headers={"Cookie": f"kbs-session-id={sid}"})
            for b in bodies
        ))  # fmt: skip
    assert all(r.status_code == 200 for r in rs)
    assert len({r.json()["token"] for r in rs}) == 1


async def test_f08_compare_and_set_in_every_store(tmp_path: Path) -> None:
    from kbs.sessions import SessionStore
    from kbs.storage import MemoryStore

    for st in (MemoryStore(), LocalFsStore(str(tmp_path))):
        a, b = SessionStore(st), SessionStore(st)  # two replicas sharing one store
        s = await a.create("sample")
        got = await asyncio.gather(a.mark_attested(s, "token-a"), b.mark_attested(s, "token-b"))
        assert got[0].token == got[1].token
        assert (await a.get(s.id)) is not None and (await a.get(s.id)).token == got[0].token  # type: ignore[union-attr]


# --- F02: ACLs see what the router sees -------------------------------------------------------


async def test_f02_acl_is_matched_on_the_routed_path(make_kbs: Any, http: httpx.AsyncClient) -> None:
    _ = admin_material  # the conftest's admin key is reused by make_kbs
    admin = {
        "authorization_mode": "AuthenticatedAuthorization",
        "authentication": {"bearer_jwt": {"identity_providers": [{"issuer": "tests", "audience": "KBS",
                                                                   "public_key_uri": "admin.pub"}]}},
        "authorization": {"regex_acl": {"acls": [
            {"role": "admin", "allowed_endpoints": "^/kbs/.+$"},
            {"role": "notprod", "allowed_endpoints": "^/kbs/v0/resource/(?!prod/).+$"},
            {"role": "reader", "allowed_endpoints": "^/kbs/v0/resource-policy$"},
        ]}},
    }  # fmt: skip
    k = await make_kbs(admin=admin)
    await k.seed(http, "prod/key/k", b"prod-value")
    np = k.admin_headers(role="notprod")
    for path in ("prod/key/k", "%70rod/key/k", "prod%2Fkey%2Fk", "%70rod%2Fkey%2Fk"):
        r = await http.post(f"{k.url}/kbs/v0/resource/{path}", content=b"evil", headers=np)
        assert r.status_code == 401 and problem(r) == "AdminAuthInitialization", path
        r = await http.delete(f"{k.url}/kbs/v0/resource/{path}", headers=np)
        assert r.status_code == 401, path
    assert await k.state.store.get("repository", "prod/key/k") == b"prod-value"
    r = await http.post(f"{k.url}/kbs/v0/resource/dev/key/k", content=b"ok", headers=np)
    assert r.status_code == 200
    # the query is not part of what the ACL sees (trustee would refuse this reader)
    r = await http.get(f"{k.url}/kbs/v0/resource-policy?x=1", headers=k.admin_headers(role="reader"))
    assert r.status_code == 200


# --- F09: no unhandled errors -----------------------------------------------------------------


def _rsa_jwk(n: int, alg: str = "RSA-OAEP-256") -> dict[str, str]:
    nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "alg": alg, "n": base64.urlsafe_b64encode(nb).rstrip(b"=").decode(), "e": "AQAB"}


async def test_f09_hostile_attest_inputs_are_401_problem_json(kbs: Kbs, http: httpx.AsyncClient) -> None:
    key = TeeKeyPair.generate()
    p256 = key.public_jwk()
    off_curve = dict(p256, y=base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode())
    bad_keys: list[dict[str, Any]] = [
        _rsa_jwk((1 << 2047) | 2),  # even modulus
        _rsa_jwk((1 << 16500) | 1),  # over 16384 bits
        _rsa_jwk((1 << 511) | 1),  # RSA-512
        off_curve,
        dict(p256, crv="P-384"),
        dict(p256, alg="none"),
        dict(p256, alg="dir"),
    ]
    raw_bodies: list[bytes] = []
    for jwk in bad_keys:
        sid, nonce = await handshake(http, kbs.url)
        raw_bodies.append(json.dumps({"runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                                      "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": ""},
                                                       "additional_evidence": ""}}).encode())  # fmt: skip
        r = await do_attest(http, kbs.url, sid, raw_bodies[-1])
        assert r.status_code == 401 and problem(r) == "AttestationError", jwk
    sid, nonce = await handshake(http, kbs.url)
    good = json.dumps(attest_body(nonce, key))
    surrogate_svn = good.replace('"svn": "1"', '"svn": "\\ud800"')
    surrogate_alg = good.replace('"alg": "ECDH-ES+A256KW"', '"alg": "\\ud800"')
    assert surrogate_svn != good and surrogate_alg != good
    toml_head = 'algorithm = "sha256"\nversion = "0.1.0"\n'
    inits = [
        toml_head + '[data]\n"aa.toml" = "a = ' + "[" * 900 + "]" * 900 + '"\n',
        toml_head + '[data]\n"aa.toml" = "a = ' + "9" * 5001 + '"\n',
        toml_head + "x = " + "[" * 900 + "]" * 900 + '\n[data]\nk = "v"\n',
    ]
    bodies = [surrogate_svn.encode(), surrogate_alg.encode()]
    bodies += [json.dumps(attest_body(nonce, key, init=t)).encode() for t in inits]
    for b in bodies:
        r = await do_attest(http, kbs.url, sid, b)
        assert r.status_code in (200, 401), r.text
        if r.status_code == 401:
            assert problem(r) == "AttestationError"
    r = await do_attest(http, kbs.url, sid, attest_body(nonce, key))
    assert r.status_code == 200


async def test_f09_a_foreign_token_with_an_unusable_key_is_a_jwe_error(
    kbs: Kbs, http: httpx.AsyncClient
) -> None:
    """Keys are checked at /attest; a token from another trusted issuer with a key the KBS
    cannot encrypt to is still refused cleanly at GET."""
    await kbs.seed(http, "default/key/k1", b"v")
    await kbs.policy(http, "allow_all")
    broker = kbs.state.service.broker
    from kbs.ear import Appraisal

    for jwk in (_rsa_jwk((1 << 2047) | 2), _rsa_jwk((1 << 16500) | 1)):
        ae = {"runtime_data_claims": {"tee-pubkey": jwk}}
        tok = broker.issue({"cpu0": Appraisal({"hardware": 2}, ae)})
        r = await http.get(
            f"{kbs.url}/kbs/v0/resource/default/key/k1", headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 401 and problem(r) in ("JweError", "TokenVerifierError")


def test_bounds_check_shape_and_elision() -> None:
    from kbs.bounds import BoundsError, check_shape, elide_long_strings

    check_shape({"a": [1, {"b": "c"}]}, max_depth=3, max_items=7, what="doc")  # keys count
    with pytest.raises(BoundsError, match="deeper"):
        check_shape({"a": [1, {"b": "c"}]}, max_depth=2, max_items=100, what="doc")
    with pytest.raises(BoundsError, match="more than"):
        check_shape(list(range(10)), max_depth=5, max_items=10, what="doc")
    for bad in ({"\ud800": 1}, ["\udfff"], {"a": object()}):
        with pytest.raises(BoundsError):
            check_shape(bad, max_depth=5, max_items=100, what="doc")
    deep: Any = 1
    for _ in range(100_000):  # iterative: no RecursionError on a deep document
        deep = [deep]
    with pytest.raises(BoundsError, match="deeper"):
        check_shape(deep, max_depth=32, max_items=10**6, what="doc")
    out = elide_long_strings({"k": ["x" * 9000, "short"]})
    assert out["k"][1] == "short" and out["k"][0].startswith("sha384:") and len(out["k"][0]) == 7 + 96


async def test_f03_session_sweeps_read_no_records_between_full_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On LocalFs (trustee's layout, no TTL in the store) this replica's expired sessions are
    removed from its own index; only every FULL_SCAN_EVERY-th sweep reads the namespace."""
    from kbs.sessions import SessionStore

    st = LocalFsStore(str(tmp_path))
    ss = SessionStore(st, timeout_min=1)
    t0 = 1_000_000.0
    await ss.purge_expired(now=t0)  # the first sweep is a full scan
    dead = [await ss.create("sample", now=t0) for _ in range(3)]
    live = [await ss.create("sample", now=t0 + 30) for _ in range(20)]
    reads: list[str] = []
    real_get = LocalFsStore.get

    async def counting_get(self: LocalFsStore, ns: str, key: str) -> bytes | None:
        reads.append(key)
        return await real_get(self, ns, key)

    monkeypatch.setattr(LocalFsStore, "get", counting_get)
    assert await ss.purge_expired(now=t0 + 61) == 3
    assert reads == []
    keys = await st.keys("kbs_protocol_session")
    assert sorted(keys) == sorted(s.id for s in live) and not set(keys) & {s.id for s in dead}
