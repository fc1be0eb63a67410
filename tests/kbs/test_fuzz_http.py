"""Property-based fuzzing of the KBS HTTP surface (Hypothesis), against a real
``kbs`` process: every endpoint, every method, hostile paths (percent-encoding,
dot segments, queries), headers (garbage and JWT-shaped bearers, session
cookies) and bodies (random bytes, and JSON shaped like each endpoint's).

Asserted for every request: the status is one trustee answers (200, 401, 404;
405 for a method trustee routes nowhere) and any 401/404 is an RFC 7807 body; after the run the process is alive, logged
no internal error, and the unauthenticated requests changed none of the state
the admin API owns (resources, policies, reference values).

Budget: ``MAX_EXAMPLES`` Hypothesis examples, each sending ``REQUESTS_PER_EXAMPLE``
requests (a bounded few seconds on CI)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbs.verifiers import KNOWN_TEES
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from tests.support.kbs import RunningKbs, start_kbs

MAX_EXAMPLES = 150
REQUESTS_PER_EXAMPLE = 3
TRUSTEE_STATUSES = {200, 401, 404}
ERR = "https://github.com/confidential-containers/kbs/errors/"

_SEGMENTS = ["auth", "attest", "resource", "resource-policy", "attestation-policy", "reference-value",
             "default", "key", "k1", "prod", "", ".", "..", "%2e%2e", "%2F", "%70rod", "a%00b", "%ff",
             "x" * 300, "\uff4b\uff45\uff59", "~", "%", "a b", "\\"]  # fmt: skip
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.just("\ud800")  # a valid JSON escape, but not Unicode text
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


#: bodies no JSON encoder writes: a 5001-digit number, nesting past the parser, NaN, a duplicate key
_RAW_BODIES = [b'{"version": ' + b"9" * 5001 + b"}", b"[" * 100_000, b'{"a": NaN}', b'{"tee": 1, "tee": 2}',
               b"\xff\xfe", b'{"runtime-data": {"nonce": "\\ud800"}}']  # fmt: skip


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@st.composite
def _path(draw: st.DrawFn) -> str:
    fixed = draw(st.sampled_from([
        "/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/resource/default/key/k1", "/kbs/v0/resource/prod/key/k",
        "/kbs/v0/resource-policy", "/kbs/v0/attestation-policy", "/kbs/v0/reference-value",
        "/kbs/v0/reference-value/svn", "/kbs/v0/", "/kbs/v0/nosuch", "/healthz", "/metrics", None,
    ]))  # fmt: skip
    if fixed is None:
        chars = st.characters(codec="ascii", exclude_categories=["Cc"], exclude_characters="#?")
        segs = draw(st.lists(st.sampled_from(_SEGMENTS) | st.text(chars, max_size=8), min_size=1, max_size=5))
        fixed = "/kbs/v0/" + "/".join(segs)
    if draw(st.booleans()):
        fixed += "?" + draw(st.sampled_from(["x=1", "a=%ff", "q=" + "z" * 100, "&&", "=", "tee=sample"]))
    return fixed


@st.composite
def _auth_header(draw: st.DrawFn) -> dict[str, str]:
    kind = draw(st.sampled_from(["none", "garbage", "jwt", "scheme"]))
    if kind == "none":
        return {}
    if kind == "garbage":
        text = draw(st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=60)).strip()
        return {"Authorization": f"Bearer {text or 'x'}"}
    if kind == "scheme":
        return {"Authorization": draw(st.sampled_from(["Basic YTpi", "bearer x", "Bearer", "Token a.b.c"]))}
    header = draw(st.sampled_from([{"alg": "none"}, {"alg": "EdDSA"}, {"alg": "ES256", "jwk": {"kty": "EC"}},
                                   {"alg": "HS256"}]))  # fmt: skip
    claims = draw(
        st.dictionaries(st.sampled_from(["role", "exp", "iss", "aud", "submods"]), _JSON, max_size=4)
    )
    tok = ".".join([_b64u(json.dumps(header).encode()), _b64u(json.dumps(claims).encode()),
                    _b64u(draw(st.binary(max_size=64)))])  # fmt: skip
    return {"Authorization": f"Bearer {tok}"}


# fmt: off
def _endpoint_json(nonce: str) -> st.SearchStrategy[Any]:
    key = TeeKeyPair.generate().public_jwk()
    rd = hash_canonical("sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key})
    return st.one_of(
        st.fixed_dictionaries({"version": st.sampled_from(["0.4.0", "0.3.0", "9", ""]) | st.text(max_size=8),
                               "tee": st.sampled_from(sorted(KNOWN_TEES)) | st.text(max_size=8),
                               "extra-params": _JSON}),
        st.fixed_dictionaries({
            "runtime-data": st.fixed_dictionaries({"nonce": st.just(nonce) | st.text(max_size=10),
                                                   "tee-pubkey": st.just(key) | _JSON}),
            "tee-evidence": st.fixed_dictionaries({
                "primary_evidence": st.just(sample_evidence(rd)) | _JSON,
                "additional_evidence": st.just("") | st.text(max_size=30) | _JSON.map(json.dumps)}),
        }, optional={"init-data": st.fixed_dictionaries({"format": st.sampled_from(["toml", "json"]),
                                                          "body": st.text(max_size=60)})}),
        st.fixed_dictionaries({"policy": st.text(max_size=40) | st.binary(max_size=60).map(_b64u)},
                              optional={"type": _JSON, "policy_id": _JSON}),
        st.fixed_dictionaries({"version": _JSON, "type": _JSON, "payload": st.text(max_size=30)}),
        _JSON,
    )


# fmt: on


def _admin_state(kbs: RunningKbs) -> dict[str, str]:
    """Every stored file but the sessions (which unauthenticated /auth creates by design)."""
    out: dict[str, str] = {}
    for p in sorted(kbs.storage_dir.rglob("*")):
        rel = p.relative_to(kbs.storage_dir)
        if p.is_file() and not rel.parts[0].startswith("kbs_protocol"):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def fuzz_kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningKbs]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with start_kbs(tmp / "kbs", policy="allow_all", resources={"default/key/k1": b"fuzz-secret"}) as kbs:
        kbs.set_sample_reference_values()
        yield kbs


@pytest.mark.slow
def test_http_surface_fuzz(fuzz_kbs: RunningKbs) -> None:
    kbs = fuzz_kbs
    before = _admin_state(kbs)
    sent = {"n": 0}
    t0 = time.monotonic()
    with httpx.Client(base_url=kbs.url, timeout=30) as c:
        r = c.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""})
        live_sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
        c.cookies.clear()

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            for _ in range(REQUESTS_PER_EXAMPLE):
                method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
                path = data.draw(_path())
                headers = data.draw(_auth_header())
                cookie = data.draw(st.sampled_from([None, live_sid, "0" * 32, "x"]))
                if cookie is not None:
                    headers["Cookie"] = f"kbs-session-id={cookie}"
                body = data.draw(st.one_of(st.none(), st.binary(max_size=200),
                                           _endpoint_json(nonce).map(lambda d: json.dumps(d).encode()),
                                           _endpoint_json(nonce).map(lambda d: json.dumps(d).encode()[:-3]),
                                           st.sampled_from(_RAW_BODIES)))  # fmt: skip
                resp = c.request(method, path, content=body, headers=headers)
                c.cookies.clear()
                sent["n"] += 1
                sent_path = resp.request.url.path  # after the client removed dot segments
                ours = sent_path.startswith("/kbs/v0/")
                # 405: a method trustee routes nowhere (it answers GET/POST/PUT/DELETE), or a GET-only page
                wrong_method = not ours or method not in ("GET", "POST", "PUT", "DELETE")
                ok = TRUSTEE_STATUSES | ({405} if wrong_method else set())
                assert resp.status_code in ok, (method, path, resp.status_code, resp.text[:200])
                if resp.status_code in (401, 404) and ours:
                    doc = resp.json()
                    assert set(doc) == {"type", "detail"} and doc["type"].startswith(ERR), resp.text[:200]

        one()
    assert kbs.proc is not None and kbs.proc.poll() is None, "the KBS died under fuzzing"
    log = kbs.log_text()
    assert "internal error" not in log and "Traceback" not in log
    # the unauthenticated requests changed nothing the admin API owns (the fuzzer's bearers
    # are never valid admin tokens: forged, unsigned or signed by nobody trusted)
    assert _admin_state(kbs) == before
    print(f"fuzz: {sent['n']} requests in {time.monotonic() - t0:.1f} s")
    assert sent["n"] >= MAX_EXAMPLES
