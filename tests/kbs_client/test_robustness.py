"""Property tests: untrusted input ends in the package's typed errors, never a crash."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coco_common.b64 import b64url_encode
from kbs_client.errors import KbsHttpError, ProtocolError
from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_client.sample import SampleEvidenceSource
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol import jwe
from kbs_protocol.errors import InvalidUri, JweError, TeeKeyError, TokenError
from kbs_protocol.jws import decode_unverified
from kbs_protocol.uri import ResourceUri

KEY = TeeKeyPair.generate()
GOOD = jwe.encrypt(b"payload", KEY.pubkey)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_uri_parse_only_raises_invalid_uri(text: str) -> None:
    try:
        u = ResourceUri.parse(text)
    except InvalidUri:
        return
    assert u.kbs_path().startswith("/kbs/v0/")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["protected", "encrypted_key", "iv", "ciphertext", "tag", "aad"]),
                       json_values | st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=60)))  # fmt: skip
def test_jwe_garbage_only_raises_jwe_error(members: dict[str, Any]) -> None:
    doc = {**GOOD, **members}
    try:
        out = KEY.decrypt(doc)
    except JweError:
        return
    assert out == b"payload"  # only an unchanged document may decrypt


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_tee_pubkey_parse(v: Any) -> None:
    try:
        k = jwe.TeePubKey.from_json(v)
    except TeeKeyError:
        return
    with contextlib.suppress(JweError):
        jwe.encrypt(b"x", k)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_token_decode(text: str) -> None:
    try:
        h, c = decode_unverified(text)
    except TokenError:
        return
    assert isinstance(h, dict) and isinstance(c, dict)


def test_jwe_json_text_limits() -> None:
    try:
        KEY.decrypt("x" * (jwe.MAX_JWE_BYTES + 1))
    except JweError as exc:
        assert "too large" in str(exc)
    else:
        raise AssertionError("oversize JWE accepted")
    assert KEY.decrypt(json.dumps(GOOD)) == b"payload"


def _with_header(header_json: bytes, **members: Any) -> dict[str, Any]:
    return {**GOOD, "protected": b64url_encode(header_json), **members}


def test_jwe_malformed_header_members_raise_jwe_error() -> None:
    # an epk that is not an object, and an aad that is not ASCII: typed errors, not TypeError/UnicodeError
    for epk in ('"abc"', '["x"]', "7"):
        hdr = b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":' + epk.encode() + b"}"
        with pytest.raises(JweError):
            KEY.decrypt(_with_header(hdr))
    with pytest.raises(JweError):
        KEY.decrypt({**GOOD, "aad": "\u00e9"})


def test_jwe_and_jws_reject_duplicate_keys() -> None:
    # security-relevant JSON is strict: a repeated member is ambiguous between parsers
    hdr = b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","enc":"A256GCM"}'
    with pytest.raises(JweError, match="protected header"):
        KEY.decrypt(_with_header(hdr))
    text = json.dumps(GOOD)
    with pytest.raises(JweError):
        KEY.decrypt(text[:-1] + ', "iv": "' + GOOD["iv"] + '"}')
    dup_claims = b64url_encode(b'{"alg":"ES256"}') + "." + b64url_encode(b'{"exp":1,"exp":2}') + ".AAAA"
    with pytest.raises(TokenError):
        decode_unverified(dup_claims)
    dup_header = b64url_encode(b'{"alg":"ES256","alg":"none"}') + "." + b64url_encode(b"{}") + ".AAAA"
    with pytest.raises(TokenError):
        decode_unverified(dup_header)
    nan_claims = b64url_encode(b'{"alg":"ES256"}') + "." + b64url_encode(b'{"exp":NaN}') + ".AAAA"
    with pytest.raises(TokenError):
        decode_unverified(nan_claims)


def test_deeply_nested_json_is_a_typed_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(JweError):
        KEY.decrypt(deep)
    with pytest.raises(JweError):
        KEY.decrypt(_with_header(deep))
    with pytest.raises(TokenError):
        decode_unverified(b64url_encode(deep) + "." + b64url_encode(b"{}") + ".AAAA")


async def test_deeply_nested_kbs_answers_are_typed_errors() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    def handler(req: httpx.Request) -> httpx.Response:
        status = 200 if req.url.path.endswith("/auth") else 401
        return httpx.Response(status, content=deep, headers={"set-cookie": "kbs-session-id=s"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(ProtocolError):
            await attest(http, "http://kbs.test", SampleEvidenceSource(), attempts=1)
        with pytest.raises(KbsHttpError):
            await get_resource(http, "http://kbs.test", "a/b/c", token="t", key=KEY)


def test_attestation_repr_hides_bearer_credentials() -> None:
    from kbs_client.rcar import Attestation

    att = Attestation("hdr.SECRET-CLAIMS.sig", KEY, {}, None, "SECRET-SESSION")
    assert "SECRET" not in repr(att) and "SECRET" not in str(att)
