from __future__ import annotations

import asyncio
import base64
import json
import ssl

import pytest

from cdh.errors import CdhConfigError, NoSuchResource, ResourceError, TokenUnavailable
from cdh.kbc import CcKbc, OfflineFsKbc, parse_resource_uri, parse_token_response
from coco_rpc import Code, RpcError
from kbs_client.rcar import Attestation
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jwe import encrypt
from tests.cdh.conftest import FakeKbs, b64u, make_jwt, serve_fake_kbs
from tests.support.registry import make_ca

KEY = TeeKeyPair.generate()
PEM = KEY.private_pem()

# ----------------------------------------------------------------------------- URIs


def test_uri_forms() -> None:
    u = parse_resource_uri("kbs:///default/key/1")
    assert (u.plugin, u.resource_path, u.query) == ("resource", "default/key/1", None)
    assert u.kbs_path() == "/kbs/v0/resource/default/key/1"
    h = parse_resource_uri("kbs://kbs.example:8080/a/b/c?version=2")
    assert h.kbs_addr == "kbs.example:8080"
    assert h.kbs_path() == "/kbs/v0/resource/a/b/c?version=2"  # host ignored, query kept
    p = parse_resource_uri("kbs+vault:///x/y")
    assert p.kbs_path() == "/kbs/v0/vault/x/y"
    assert str(p) == "kbs+vault:///x/y"


@pytest.mark.parametrize(
    "bad",
    [
        "http://x/a/b/c",
        "kbs:///a/b",
        "kbs:///a/../c",
        "kbs:/a/b/c",
        "kbs:///a/b/c d",
        "kbs+:///a/b/c",
        "",
        "default/key/1",  # a bare path is a local key name for sealed secrets, never a URI
        # parsed strictly: nothing dropped, normalised or echoed that the KBS path does not carry
        "kbs:///a/b/c\n",
        "kbs:///a/b/c?x\ny",
        "kbs:///a/b/c?a b",
        "kbs:///a/b/c#frag",
        "kbs:///\u00e4/b/c",
        "kbs:///a/b/\u0663",
        "kbs://user:pw@kbs/a/b/c",
        "kbs://h\tost/a/b/c",
        "kbs:///a//b/c",
        "kbs:///a/b/c/",
        "kbs+resource-policy:///x",
    ],
)
def test_uri_rejects(bad: str) -> None:
    with pytest.raises(ResourceError):
        parse_resource_uri(bad)


# ----------------------------------------------------------------------------- offline_fs_kbc


async def test_offline_fs(tmp_path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"default/key/1": base64.b64encode(b"one").decode()}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"default/key/2": base64.b64encode(b"two").decode(), "bad/x/y": "!!"}))
    kbc = OfflineFsKbc([a, tmp_path / "missing.json"], env={"OFFLINE_FS_KBC_EXTRA_FILE_PATH": str(b)})
    assert await kbc.get_resource("kbs:///default/key/1") == b"one"
    assert await kbc.get_resource("kbs:///default/key/2") == b"two"
    with pytest.raises(NoSuchResource):
        await kbc.get_resource("kbs:///default/key/3")
    with pytest.raises(ResourceError, match="base64"):
        await kbc.get_resource("kbs:///bad/x/y")
    # which of two values for one name would be served? neither
    a.write_text('{"default/key/1": "b25l", "default/key/1": "dHdv"}')
    with pytest.raises(ResourceError, match="duplicate"):
        await kbc.get_resource("kbs:///default/key/1")


# ----------------------------------------------------------------------------- tokens


def test_parse_token_response() -> None:
    tok = parse_token_response(json.dumps({"token": make_jwt(1234, "a"), "tee_keypair": "PEM"}).encode())
    assert tok.token == make_jwt(1234, "a") and tok.tee_keypair_pem == "PEM"
    assert "PEM" not in repr(tok) and "ey" not in repr(tok)
    for bad in (
        b"nope",
        b"[]",
        b'{"token": 1, "tee_keypair": "x"}',
        b'{"token": "x"}',
        b'{"token": "a.b.c", "token": "d.e.f", "tee_keypair": "x"}',  # which one would be used?
    ):
        with pytest.raises(TokenUnavailable):
            parse_token_response(bad)


def test_aa_token_expiry_is_read_leniently() -> None:
    """An exp that is no usable time means "no expiry known" (the KBS's rejection then
    triggers the refetch), not an OverflowError escaping as an internal error."""
    assert Attestation.opaque(make_jwt(1234, "a"), KEY).expires_at == 1234
    for exp in ("1" + "0" * 400, "1e400", "true", '"soon"'):
        claims = b'{"exp": ' + exp.encode() + b"}"
        token = f"{b64u(b'{}')}.{b64u(claims)}.sig"
        assert Attestation.opaque(token, KEY).expires_at is None
    assert Attestation.opaque("not a jwt", KEY).expires_at is None


def _kbc(fetch, **kw) -> CcKbc:  # type: ignore[no-untyped-def]
    return CcKbc("http://kbs.invalid", fetch, **kw)


async def test_token_single_flight_and_expiry() -> None:
    now = [1000.0]
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return json.dumps({"token": make_jwt(now[0] + 60, str(calls)), "tee_keypair": PEM}).encode()

    rc = _kbc(fetch, clock=lambda: now[0]).resource_client()
    tasks = [asyncio.create_task(rc.attestation()) for _ in range(10)]
    await asyncio.sleep(0.01)
    gate.set()
    toks = await asyncio.gather(*tasks)
    assert calls == 1 and all(t is toks[0] for t in toks)
    assert await rc.attestation() is toks[0]
    now[0] += 55  # within the 10 s safety margin of exp: refresh
    t2 = await rc.attestation()
    assert calls == 2 and t2 is not toks[0]


async def test_token_failure_is_shared_and_not_kept() -> None:
    n = 0
    gate = asyncio.Event()

    async def fetch() -> bytes:
        nonlocal n
        n += 1
        if n == 1:
            await gate.wait()
            raise RpcError(Code.UNAVAILABLE, "AA down")
        if n == 2:  # text of an unexpected exception is not repeated (it could hold the key)
            raise ValueError("-----BEGIN PRIVATE KEY----- MIGHAgEA")
        if n == 3:
            return json.dumps({"token": make_jwt(None, "x"), "tee_keypair": "not a key"}).encode()
        return json.dumps({"token": make_jwt(None, "x"), "tee_keypair": PEM}).encode()

    rc = _kbc(fetch).resource_client()
    waiting = [asyncio.create_task(rc.attestation()) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    for got in await asyncio.gather(*waiting, return_exceptions=True):  # one AA call, one answer for all
        assert isinstance(got, TokenUnavailable) and "AA down" in str(got)
    assert n == 1
    with pytest.raises(TokenUnavailable, match="ValueError") as ei:
        await rc.attestation()
    assert "PRIVATE" not in str(ei.value)
    with pytest.raises(TokenUnavailable, match="tee_keypair is not a usable key"):
        await rc.attestation()
    assert (await rc.attestation()).token.endswith(".sig")
    assert rc.handshakes == 4


# ----------------------------------------------------------------------------- cc_kbc over HTTP


async def test_cc_kbc_reuses_one_token(fake_kbs: FakeKbs) -> None:
    fake_kbs.resources = {"default/key/1": b"secret-1", "default/key/2": b"\x00" * 5000}
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue)
    try:
        assert await kbc.get_resource("kbs:///default/key/1") == b"secret-1"
        assert await kbc.get_resource("kbs://ignored.host:1/default/key/2") == b"\x00" * 5000
        got = await asyncio.gather(*(kbc.get_resource("kbs:///default/key/1") for _ in range(8)))
        assert got == [b"secret-1"] * 8
        assert fake_kbs.issued == 1 and kbc.resource_client().handshakes == 1
        assert len({t for _, t in fake_kbs.requests}) == 1
    finally:
        await kbc.close()


async def test_cc_kbc_concurrent_first_calls_share_one_token(fake_kbs: FakeKbs) -> None:
    fake_kbs.resources = {"a/b/c": b"x"}
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue)
    try:
        await asyncio.gather(*(kbc.get_resource("kbs:///a/b/c") for _ in range(6)))
        assert fake_kbs.issued == 1
    finally:
        await kbc.close()


async def test_cc_kbc_refetches_once_when_rejected(fake_kbs: FakeKbs) -> None:
    fake_kbs.resources = {"a/b/c": b"v"}
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue)
    try:
        assert await kbc.get_resource("kbs:///a/b/c") == b"v"
        fake_kbs.revoked.update(fake_kbs.tokens)  # e.g. the KBS restarted with a new signer
        assert await kbc.get_resource("kbs:///a/b/c") == b"v"
        assert fake_kbs.issued == 2
    finally:
        await kbc.close()


async def test_cc_kbc_refetches_after_expiry(fake_kbs: FakeKbs) -> None:
    now = [10_000.0]
    fake_kbs.clock = lambda: now[0]
    fake_kbs.token_lifetime = 120
    fake_kbs.resources = {"a/b/c": b"v"}
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue, clock=lambda: now[0])
    try:
        await kbc.get_resource("kbs:///a/b/c")
        now[0] += 60
        await kbc.get_resource("kbs:///a/b/c")
        assert fake_kbs.issued == 1
        now[0] += 60
        await kbc.get_resource("kbs:///a/b/c")
        assert fake_kbs.issued == 2
    finally:
        await kbc.close()


async def test_cc_kbc_missing_resource_reattests_as_upstream(fake_kbs: FakeKbs) -> None:
    """trustee answers a missing resource with 401 PluginInternalError; upstream's
    token client treats every 401 alike: new token, retry, three requests in all."""
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue)
    try:
        with pytest.raises(NoSuchResource, match=r"PluginInternalError.*unauthorized after 3 attempts"):
            await kbc.get_resource("kbs:///a/b/missing")
        assert len(fake_kbs.requests) == 3 and fake_kbs.issued == 3
        assert len({t for _, t in fake_kbs.requests}) == 3  # each retry with a fresh token
        with pytest.raises(NoSuchResource):  # 404: no retry, no new token
            await kbc.get_resource("kbs+nope:///a/b")
        assert len(fake_kbs.requests) == 4 and fake_kbs.issued == 4  # the last 401 dropped the token
    finally:
        await kbc.close()


async def test_cc_kbc_retries_any_401_up_to_three_times() -> None:
    """Any 401 (an unknown error type, or none at all) re-attests and retries;
    a success on the third request is returned; a fourth request is never made."""
    import httpx

    answers = [
        httpx.Response(401, content=b'{"type": "https://x/errors/PolicyDenied", "detail": "d"}'),
        httpx.Response(401, content=b"not json"),
    ]
    seen: list[str] = []
    issued = [0]

    async def issue() -> bytes:
        issued[0] += 1
        return json.dumps({"token": make_jwt(None, f"t{issued[0]}"), "tee_keypair": PEM}).encode()

    def kbs(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return answers.pop(0) if answers else httpx.Response(200, json=encrypt(b"plain", KEY.pubkey))

    kbc = CcKbc("http://kbs.invalid", issue, http=httpx.AsyncClient(transport=httpx.MockTransport(kbs)))
    try:
        assert await kbc.get_resource("kbs:///a/b/c") == b"plain"
        assert issued[0] == 3 and len(seen) == 3 and len(set(seen)) == 3
        # the token that finally worked is reused
        assert await kbc.get_resource("kbs:///a/b/c") == b"plain"
        assert issued[0] == 3 and seen[-1] == seen[-2]

        answers.extend([httpx.Response(401, content=b"")] * 5)
        with pytest.raises(ResourceError, match="HTTP 401, request unauthorized after 3 attempts"):
            await kbc.get_resource("kbs:///a/b/c")
        assert len(seen) == 7 and issued[0] == 5 and len(answers) == 2
    finally:
        await kbc.close()


async def test_cc_kbc_concurrent_401s_share_one_new_token(fake_kbs: FakeKbs) -> None:
    """Single-flight survives the retries: callers rejected with the same token
    wait for one new GetToken between them."""
    fake_kbs.resources = {"a/b/c": b"v"}
    kbc = CcKbc(fake_kbs.url, fake_kbs.issue)
    try:
        assert await kbc.get_resource("kbs:///a/b/c") == b"v"
        fake_kbs.revoked.update(fake_kbs.tokens)
        got = await asyncio.gather(*(kbc.get_resource("kbs:///a/b/c") for _ in range(6)))
        assert got == [b"v"] * 6 and fake_kbs.issued == 2
    finally:
        await kbc.close()


async def test_cc_kbc_unreachable_kbs() -> None:
    async def issue() -> bytes:
        return json.dumps({"token": make_jwt(None, "x"), "tee_keypair": PEM}).encode()

    kbc = CcKbc("http://127.0.0.1:9", issue)
    try:
        with pytest.raises(ResourceError, match="cannot reach the KBS"):
            await kbc.get_resource("kbs:///a/b/c")
    finally:
        await kbc.close()


async def test_cc_kbc_wrong_key_fails_cleanly(fake_kbs: FakeKbs) -> None:
    fake_kbs.resources = {"a/b/c": b"top-secret-value"}

    async def issue_wrong_key() -> bytes:
        good = json.loads(await fake_kbs.issue())
        from kbs_client.tee_key import TeeKeyPair

        good["tee_keypair"] = TeeKeyPair.generate().private_pem()
        return json.dumps(good).encode()

    kbc = CcKbc(fake_kbs.url, issue_wrong_key)
    try:
        with pytest.raises(ResourceError, match="cannot decrypt") as ei:
            await kbc.get_resource("kbs:///a/b/c")
        assert "top-secret" not in str(ei.value)
    finally:
        await kbc.close()


async def test_cc_kbc_https_with_kbs_cert(tmp_path) -> None:
    ca, cert, key = make_ca(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with serve_fake_kbs(ctx) as kbs:
        kbs.resources = {"a/b/c": b"over-tls"}
        trusted = CcKbc(kbs.url, kbs.issue, kbs_cert=ca.read_text())
        untrusted = CcKbc(kbs.url, kbs.issue)
        try:
            assert await trusted.get_resource("kbs:///a/b/c") == b"over-tls"
            with pytest.raises(ResourceError, match="cannot reach the KBS"):
                await untrusted.get_resource("kbs:///a/b/c")
        finally:
            await trusted.close()
            await untrusted.close()


async def test_cc_kbc_trust_and_proxy_do_not_come_from_the_environment(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only [kbc] kbs_cert (or the system store) is trusted for the KBS: SSL_CERT_FILE
    naming another CA, or a proxy variable, must not redirect or relax the check."""
    ca, cert, key = make_ca(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with serve_fake_kbs(ctx) as kbs:
        kbs.resources = {"a/b/c": b"over-tls"}
        kbc = CcKbc(kbs.url, kbs.issue)
        try:
            with pytest.raises(ResourceError, match="cannot reach the KBS"):
                await kbc.get_resource("kbs:///a/b/c")
        finally:
            await kbc.close()
    async with serve_fake_kbs() as kbs:
        kbs.resources = {"a/b/c": b"direct"}
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
        kbc = CcKbc(kbs.url, kbs.issue)
        try:
            assert await kbc.get_resource("kbs:///a/b/c") == b"direct"
        finally:
            await kbc.close()


async def test_cc_kbc_deeply_nested_answers_are_plain_errors() -> None:
    """A KBS error body or a token claim nested past the parser's recursion limit is
    an ordinary failure, not a RecursionError escaping the error tree."""
    import httpx

    deep = b"[" * 60_000

    def kbs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=deep)

    async def issue() -> bytes:
        claims = b'{"exp": ' + deep + b"}"
        token = f"{b64u(b'{}')}.{b64u(claims)}.sig"
        return json.dumps({"token": token, "tee_keypair": PEM}).encode()

    kbc = CcKbc("http://kbs.invalid", issue, http=httpx.AsyncClient(transport=httpx.MockTransport(kbs)))
    try:
        with pytest.raises(ResourceError, match="HTTP 403"):
            await kbc.get_resource("kbs:///a/b/c")
        assert (await kbc.resource_client().attestation()).expires_at is None
    finally:
        await kbc.close()


def test_cc_kbc_bad_kbs_cert_is_a_config_error() -> None:
    async def issue() -> bytes:
        return b""

    with pytest.raises(CdhConfigError, match="kbs_cert"):
        CcKbc("https://kbs.invalid", issue, kbs_cert="-----BEGIN CERTIFICATE-----\nnope\n")


async def test_kbs_error_type_is_not_echoed_raw() -> None:
    """The KBS's error type goes into the RPC error and the log: a crafted one
    cannot inject lines or control characters."""
    import httpx

    body = json.dumps({"type": "https://x/errors/Nope\n2026-01-01 INFO forged line", "detail": "d"})

    def kbs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=body.encode())

    async def issue() -> bytes:
        return json.dumps({"token": make_jwt(None, "t"), "tee_keypair": PEM}).encode()

    kbc = CcKbc("http://kbs.invalid", issue, http=httpx.AsyncClient(transport=httpx.MockTransport(kbs)))
    try:
        with pytest.raises(ResourceError) as ei:
            await kbc.get_resource("kbs:///a/b/c")
        assert "\n" not in str(ei.value) and "forged" not in str(ei.value)
    finally:
        await kbc.close()
