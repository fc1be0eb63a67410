"""Registry protocol logic against httpx.MockTransport (no I/O).

The mock plays a registry: it is the one thing that cannot be a real server
for these cases (a real docker-registry never lies about digests, never loops
redirects, never answers 429). Real-registry behaviour is covered in
test_pull_registry.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from image_pull.auth import AuthFile
from image_pull.errors import AuthError, DigestMismatch, NotFound, RateLimited, RegistryError, TooLarge
from image_pull.reference import parse_reference
from image_pull.registry import MAX_MANIFEST_SIZE, RegistryClient, RetryPolicy

HOST = "reg.example:5000"
REF = parse_reference(f"{HOST}/ns/app:1")
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
MDIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 4096  # 1 MiB
BDIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
AUTH = AuthFile.from_bytes(
    json.dumps({"auths": {HOST: {"auth": base64.b64encode(b"alice:s3cret-pw").decode()}}}).encode()
)
SECRET_BASIC = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()


class Recorder:
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        return self.handler(req)


def client(
    handler: Callable[[httpx.Request], httpx.Response], *, auth: AuthFile | None = AUTH, **kw: Any
) -> tuple[RegistryClient, Recorder, list[float]]:
    rec = Recorder(handler)
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    http = httpx.AsyncClient(transport=httpx.MockTransport(rec))
    retry = kw.pop("retry", RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.05))
    rc = RegistryClient(http, auth=auth, retry=retry, sleep=fake_sleep, **kw)
    return rc, rec, sleeps


def manifest_response(body: bytes = MANIFEST, **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", **headers}
    return httpx.Response(200, content=body, headers=h)


# ---------------------------------------------------------------------- auth
async def test_bearer_token_dance_caches_token_and_sends_basic_only_to_realm() -> None:
    tokens_issued = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            assert req.headers.get("authorization") == SECRET_BASIC
            assert req.url.params.get_list("scope") == ["repository:ns/app:pull"]
            assert req.url.params["service"] == "reg"
            assert req.url.params["account"] == "alice"
            tokens_issued.append(1)
            return httpx.Response(200, json={"token": "tok-1", "expires_in": 300})
        if req.headers.get("authorization") != "Bearer tok-1":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token",service="reg"'}
            )
        if req.url.path == "/v2/ns/app/manifests/1":
            return manifest_response()
        return httpx.Response(404)

    rc, rec, _ = client(handler)
    m1 = await rc.get_manifest(REF)
    m2 = await rc.get_manifest(REF)
    assert m1.digest == m2.digest == MDIGEST
    assert len(tokens_issued) == 1  # cached for the scope
    # the registry itself never saw the password
    assert all(
        r.headers.get("authorization") != SECRET_BASIC for r in rec.requests if r.url.host != "auth.example"
    )


async def test_expired_token_is_refreshed_once_on_401() -> None:
    issued = iter(["old", "new"])

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            return httpx.Response(200, json={"access_token": next(issued)})
        if req.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t"'})
        if req.headers.get("authorization") == "Bearer new":
            return manifest_response()
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t"'})

    rc, _, _ = client(handler)
    assert (await rc.get_manifest(REF)).digest == MDIGEST


async def test_insufficient_scope_requests_the_scope_the_registry_names() -> None:
    scopes = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            scope = req.url.params["scope"]
            scopes.append(scope)
            return httpx.Response(200, json={"token": scope})
        if req.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t"'})
        if req.headers.get("authorization") == "Bearer repository:ns/app:pull,extra":
            return manifest_response()
        return httpx.Response(
            401,
            headers={
                "WWW-Authenticate": 'Bearer realm="https://auth.example/t",scope="repository:ns/app:pull,extra",'
                'error="insufficient_scope"'
            },
        )

    rc, _, _ = client(handler)
    await rc.get_manifest(REF)
    assert scopes == ["repository:ns/app:pull", "repository:ns/app:pull,extra"]


async def test_wrong_password_is_an_auth_error_without_the_secret() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}, json={"errors": []})

    rc, rec, _ = client(handler)
    with pytest.raises(AuthError) as ei:
        await rc.get_manifest(REF)
    assert "s3cret" not in str(ei.value)
    assert rec.requests[-1].headers["authorization"] == SECRET_BASIC


async def test_token_realm_over_plain_http_gets_no_credentials_for_https_registry() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.scheme == "https", "credentials must not go to a plain-HTTP realm"
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example/t"'})

    rc, _, _ = client(handler)
    with pytest.raises(AuthError, match="plain HTTP"):
        await rc.get_manifest(REF)


async def test_anonymous_registry_sends_no_authorization() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert "authorization" not in req.headers
        return manifest_response() if "manifests" in req.url.path else httpx.Response(200)

    rc, _, _ = client(handler)
    await rc.get_manifest(REF)


async def test_insecure_registry_uses_plain_http_others_https() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return manifest_response() if "manifests" in req.url.path else httpx.Response(200)

    rc, rec, _ = client(handler, insecure_registries=frozenset({HOST}))
    await rc.get_manifest(REF)
    assert {r.url.scheme for r in rec.requests} == {"http"}
    rc2, rec2, _ = client(handler)
    await rc2.get_manifest(REF)
    assert {r.url.scheme for r in rec2.requests} == {"https"}


# ---------------------------------------------------------------------- manifests
async def test_manifest_accept_header_lists_oci_and_docker_types() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            acc = req.headers["accept"]
            for t in ("vnd.oci.image.manifest.v1+json", "vnd.oci.image.index.v1+json", "manifest.v2+json"):
                assert t in acc
            return manifest_response()
        return httpx.Response(200)

    rc, _, _ = client(handler)
    await rc.get_manifest(REF)


async def test_docker_content_digest_must_match_body() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            return manifest_response(**{"Docker-Content-Digest": "sha256:" + "0" * 64})
        return httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(DigestMismatch):
        await rc.get_manifest(REF)


async def test_manifest_by_digest_must_hash_to_that_digest() -> None:
    other = "sha256:" + "1" * 64

    def handler(req: httpx.Request) -> httpx.Response:
        return manifest_response() if "manifests" in req.url.path else httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(DigestMismatch):
        await rc.get_manifest(REF, other)
    assert (await rc.get_manifest(REF, MDIGEST)).digest == MDIGEST


async def test_manifest_over_the_size_limit_is_refused_even_without_content_length() -> None:
    big = b"{" + b" " * (MAX_MANIFEST_SIZE + 10) + b"}"

    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:

            async def gen() -> Any:
                for i in range(0, len(big), 1 << 16):
                    yield big[i : i + (1 << 16)]

            return httpx.Response(200, content=gen(), headers={"Content-Type": "application/json"})
        return httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(TooLarge):
        await rc.get_manifest(REF)


async def test_html_error_page_gives_a_short_typed_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            return httpx.Response(
                404, content=b"<html><body>nope</body></html>", headers={"Content-Type": "text/html"}
            )
        return httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(NotFound, match="HTTP 404") as ei:
        await rc.get_manifest(REF)
    assert "<html>" not in str(ei.value)


async def test_registry_json_error_code_is_reported() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            return httpx.Response(
                404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
            )
        return httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        await rc.get_manifest(REF)


async def test_registry_error_body_nesting_bomb_is_a_registry_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            return httpx.Response(500, content=b"[" * 200_000, headers={"Content-Type": "application/json"})
        return httpx.Response(200)

    rc, _, _ = client(handler, retry=RetryPolicy(attempts=1))
    with pytest.raises(RegistryError, match="HTTP 500"):
        await rc.get_manifest(REF)


async def test_registry_error_text_cannot_forge_log_lines() -> None:
    evil = "denied\nERROR image_pull: pull of x succeeded\x1b[2K\r"

    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            return httpx.Response(404, json={"errors": [{"code": "DENIED\n", "message": evil}]})
        return httpx.Response(200)

    rc, _, _ = client(handler)
    with pytest.raises(NotFound) as ei:
        await rc.get_manifest(REF)
    text = str(ei.value)
    assert "DENIED: deniedERROR image_pull: pull of x succeeded[2K" in text
    assert not any(c in text for c in "\n\r\x1b")


# ---------------------------------------------------------------------- retries, redirects
async def test_429_with_retry_after_is_retried_after_the_given_delay() -> None:
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            calls["n"] += 1
            if calls["n"] < 3:
                return httpx.Response(429, headers={"Retry-After": "7"})
            return manifest_response()
        return httpx.Response(200)

    rc, _, sleeps = client(handler)
    await rc.get_manifest(REF)
    assert sleeps == [7.0, 7.0]


async def test_429_forever_gives_rate_limited() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(429) if "manifests" in req.url.path else httpx.Response(200)

    rc, _, sleeps = client(handler)
    with pytest.raises(RateLimited):
        await rc.get_manifest(REF)
    assert len(sleeps) == 3  # attempts=4


async def test_retry_after_beyond_the_cap_fails_fast() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return (
            httpx.Response(429, headers={"Retry-After": "3600"})
            if "manifests" in req.url.path
            else httpx.Response(200)
        )

    rc, _, sleeps = client(handler)
    with pytest.raises(RateLimited):
        await rc.get_manifest(REF)
    assert sleeps == []


async def test_connection_errors_are_retried_with_backoff() -> None:
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        if "manifests" in req.url.path:
            calls["n"] += 1
            if calls["n"] < 3:
                raise httpx.ConnectError("refused", request=req)
            return manifest_response()
        return httpx.Response(200)

    rc, _, sleeps = client(handler)
    await rc.get_manifest(REF)
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.2


async def test_redirect_to_other_host_drops_authorization() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "cdn.example":
            assert "authorization" not in req.headers
            return httpx.Response(200, content=BLOB)
        if req.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        assert req.headers["authorization"] == SECRET_BASIC
        return httpx.Response(307, headers={"Location": "https://cdn.example/blob?sig=1"})

    rc, rec, _ = client(handler)
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    await rc.stream_blob(REF, BDIGEST, len(BLOB), sink)
    assert bytes(out) == BLOB
    assert any(r.url.host == "cdn.example" for r in rec.requests)


async def test_challenge_from_a_redirect_target_never_gets_credentials() -> None:
    """Anonymous ping, blob redirected to storage that answers 401 with its own Bearer realm:
    the registry credentials must not be sent to that realm."""

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "cdn.example":
            assert "authorization" not in req.headers, "credentials went to the storage host"
            if req.url.path == "/token":
                return httpx.Response(200, json={"token": "t"})
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://cdn.example/token",service="x"'}
            )
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(307, headers={"Location": "https://cdn.example/blob?sig=1"})

    rc, rec, _ = client(handler)

    async def sink(b: bytes) -> None:
        raise AssertionError("no content expected")

    with pytest.raises(AuthError):
        await rc.stream_blob(REF, BDIGEST, len(BLOB), sink)
    assert not any(r.url.path == "/token" for r in rec.requests)


async def test_ping_redirected_to_another_hosts_login_is_refused() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "login.example":
            assert "authorization" not in req.headers, "credentials went to another host"
            if req.url.path == "/token":
                return httpx.Response(200, json={"token": "t"})
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://login.example/token"'}
            )
        if req.url.path == "/v2/":
            return httpx.Response(307, headers={"Location": "https://login.example/v2/"})
        return manifest_response()

    rc, rec, _ = client(handler)
    with pytest.raises(AuthError, match="another host"):
        await rc.get_manifest(REF)
    assert not any(r.url.path == "/token" for r in rec.requests)


async def test_redirect_same_origin_keeps_authorization() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        assert req.headers["authorization"] == SECRET_BASIC
        if req.url.path == "/elsewhere":
            return manifest_response()
        return httpx.Response(302, headers={"Location": "/elsewhere"})

    rc, _, _ = client(handler)
    await rc.get_manifest(REF)


async def test_endless_redirects_stop() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(302, headers={"Location": f"/loop/{len(req.url.path)}"})

    rc, rec, _ = client(handler)
    with pytest.raises(RegistryError, match="redirects"):
        await rc.get_manifest(REF)
    assert len(rec.requests) < 20


async def test_https_to_http_redirect_is_refused() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(307, headers={"Location": "http://cdn.example/blob"})

    rc, _, _ = client(handler)
    with pytest.raises(RegistryError, match="plain http"):
        await rc.get_manifest(REF)


# ---------------------------------------------------------------------- blobs
class CuttingBlobServer:
    """Serves BLOB, cutting the body after ``cut`` bytes on the first ``cuts`` responses."""

    def __init__(self, cut: int, cuts: int, honour_range: bool = True) -> None:
        self.cut = cut
        self.cuts = cuts
        self.ranges: list[str | None] = []
        self.honour_range = honour_range

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        rng = req.headers.get("range")
        self.ranges.append(rng)
        start = 0
        status = 200
        headers = {}
        if rng and self.honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        body = BLOB[start:]
        cut_now = self.cuts > 0
        self.cuts -= 1

        async def gen() -> Any:
            sent = 0
            for i in range(0, len(body), 65536):
                chunk = body[i : i + 65536]
                if cut_now and sent + len(chunk) > self.cut:
                    raise httpx.ReadError("connection reset")
                sent += len(chunk)
                yield chunk

        return httpx.Response(status, content=gen(), headers=headers)


async def collect(rc: RegistryClient, digest: str = BDIGEST, size: int = len(BLOB)) -> bytes:
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    await rc.stream_blob(REF, digest, size, sink)
    return bytes(out)


async def test_blob_resumes_with_range_after_connection_cut() -> None:
    srv = CuttingBlobServer(cut=300_000, cuts=2)
    rc, _, _ = client(srv, auth=None)
    assert await collect(rc) == BLOB
    assert srv.ranges[0] is None
    assert srv.ranges[1] is not None and srv.ranges[1].startswith("bytes=")
    assert len(srv.ranges) == 3


async def test_blob_resume_refused_when_registry_ignores_range() -> None:
    srv = CuttingBlobServer(cut=300_000, cuts=1, honour_range=False)
    rc, _, _ = client(srv, auth=None)
    with pytest.raises(RegistryError, match="ignored the Range"):
        await collect(rc)


async def test_blob_gives_up_after_resume_budget() -> None:
    srv = CuttingBlobServer(cut=1000, cuts=100)
    rc, _, _ = client(srv, auth=None, retry=RetryPolicy(attempts=2, initial_delay=0.0, resume_attempts=3))
    with pytest.raises(RegistryError, match="gave up"):
        await collect(rc)


async def test_blob_with_wrong_content_is_a_digest_mismatch() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BLOB[:-1] + b"\0")

    rc, _, _ = client(handler, auth=None)
    with pytest.raises(DigestMismatch):
        await collect(rc)


async def test_blob_larger_than_descriptor_is_refused_early() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        async def gen() -> Any:
            for _ in range(64):
                yield BLOB

        return httpx.Response(200, content=gen())

    rc, _, _ = client(handler, auth=None)
    with pytest.raises(DigestMismatch, match=r"more data|sends"):
        await collect(rc)


async def test_blob_content_length_lie_is_refused() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BLOB + b"x")

    rc, _, _ = client(handler, auth=None)
    with pytest.raises(DigestMismatch):
        await collect(rc)


async def test_no_credentials_or_tokens_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            return httpx.Response(200, json={"token": "TOKEN-SECRET-123"})
        if req.headers.get("authorization") != "Bearer TOKEN-SECRET-123":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t"'})
        if "manifests" in req.url.path:
            return httpx.Response(500, content=b"<html>oops</html>", headers={"Content-Type": "text/html"})
        return httpx.Response(200)

    caplog.set_level(logging.DEBUG)
    rc, _, _ = client(handler)
    with pytest.raises(RegistryError) as ei:
        await rc.get_manifest(REF)
    text = caplog.text + str(ei.value)
    assert "s3cret-pw" not in text and "TOKEN-SECRET-123" not in text
    assert base64.b64encode(b"alice:s3cret-pw").decode() not in text


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
async def test_challenge_on_a_resource_after_an_anonymous_ping_is_adopted(scheme: str) -> None:
    challenge = 'Bearer realm="https://auth.example/t"' if scheme == "bearer" else 'Basic realm="r"'
    good = "Bearer tok" if scheme == "bearer" else SECRET_BASIC

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example":
            return httpx.Response(200, json={"token": "tok"})
        if req.url.path == "/v2/":
            return httpx.Response(200)
        if req.headers.get("authorization") == good:
            return manifest_response()
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    rc, _, _ = client(handler)
    assert (await rc.get_manifest(REF)).digest == MDIGEST


@pytest.mark.parametrize(
    ("status", "header", "want"),
    [
        (200, MDIGEST, MDIGEST),
        (200, None, None),
        (200, "sha256:NOTHEX", None),
        (404, MDIGEST, None),
        (401, MDIGEST, None),
    ],
)
async def test_head_manifest(status: int, header: str | None, want: str | None) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        assert req.method == "HEAD" and "vnd.oci.image.manifest.v1+json" in req.headers["accept"]
        return httpx.Response(status, headers={"Docker-Content-Digest": header} if header else {})

    rc, _, _ = client(handler, auth=None)
    assert await rc.head_manifest(REF) == want


def test_registry_tls_context_reads_the_system_trust_store_before_its_first_connection() -> None:
    import ssl

    from image_pull.registry import ssl_context

    reference = ssl.create_default_context()
    ctx = ssl_context()
    for attr in ("verify_mode", "check_hostname", "options", "verify_flags", "minimum_version", "protocol"):
        assert getattr(ctx, attr) == getattr(reference, attr), attr
    assert ctx.cert_store_stats()["x509_ca"] == 0  # not read while the pull starts up
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="registry.example")
    assert ctx.cert_store_stats() == reference.cert_store_stats()  # read before any handshake
    assert ssl_context().get_ca_certs() == []  # each context reads it for itself
