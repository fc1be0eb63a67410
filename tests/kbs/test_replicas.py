"""Two KBS replicas on one real redis-server serve one handshake split across them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kbs_client.rcar import auth_body
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from tests.support.kbs import free_port, start_kbs

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server (Debian) not installed"
)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis

        r = redis.Redis(port=port)
        deadline = time.time() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        r.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_handshake_split_across_replicas(tmp_path: Path, redis_url: str) -> None:
    key_file = tmp_path / "at-rest.key"
    key_file.write_text(os.urandom(32).hex())
    secret = b"replicated-secret-" + os.urandom(8).hex().encode()
    # secure token trust (no insecure_header_jwk): both replicas sign with, and so trust, the one
    # configured [attestation_service.attestation_token_broker.signer] key_path
    common = {"storage": "Redis", "redis_url": redis_url, "at_rest_key": key_file, "signer_key": True}
    with (
        start_kbs(tmp_path, policy="allow_all", **common) as a,
        start_kbs(tmp_path, policy=None, **common) as b,
    ):
        b.set_resource("default/key/shared", secret)  # seeded through replica B
        key = TeeKeyPair.generate()
        with httpx.Client(timeout=30) as c:
            r = c.post(f"{a.url}/kbs/v0/auth", json=auth_body("sample"))  # auth on A
            assert r.status_code == 200
            sid = r.cookies["kbs-session-id"]
            c.cookies.clear()
            nonce = r.json()["nonce"]
            rd = hash_canonical(
                "sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()}
            )
            body = {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                    "tee-evidence": {"primary_evidence": sample_evidence(rd), "additional_evidence": ""}}  # fmt: skip
            cookie = {"Cookie": f"kbs-session-id={sid}"}
            r = r_attest = c.post(
                f"{b.url}/kbs/v0/attest", content=json.dumps(body).encode(), headers=cookie
            )  # attest on B
            assert r.status_code == 200, r.text
            c.cookies.clear()
            r = c.get(f"{a.url}/kbs/v0/resource/default/key/shared", headers=cookie)  # fetch from A
            assert r.status_code == 200, r.text
            assert key.decrypt(r.json()) == secret
            # passport mode across replicas: B's token is trusted by A (the shared signer key)
            token = r_attest.json()["token"]
            r = c.get(
                f"{a.url}/kbs/v0/resource/default/key/shared", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200 and key.decrypt(r.json()) == secret
            # the policy set through A governs B too
            a.set_resource_policy("deny_all")
            r = c.get(f"{b.url}/kbs/v0/resource/default/key/shared", headers=cookie)
            assert r.status_code == 401 and r.json()["type"].endswith("/PolicyDeny")

        for replica in (a, b):
            assert "INSECURE: [attestation_token]" not in replica.log_text()  # no insecure token trust
        import redis

        raw = redis.Redis.from_url(redis_url).get(
            "repository:default/key/shared"
        )  # trustee: <namespace>:<key>
        assert raw is not None and secret not in raw  # sealed at rest
        assert base64.b64encode(secret) not in raw


def test_ephemeral_signers_warn_on_shared_sessions(tmp_path: Path, redis_url: str) -> None:
    # no signer key_path on a Redis session store: each replica would trust only its own tokens; said at start
    with start_kbs(tmp_path, policy=None, storage="Redis", redis_url=redis_url) as a:
        pass
    assert "ephemeral" in a.log_text() and "key_path" in a.log_text()


async def test_one_nonce_one_attestation_across_replicas(redis_url: str) -> None:
    """Two replicas finishing /attest on one session at once: the create-only claim in Redis
    lets exactly one token win, and both replicas answer with it."""
    import asyncio

    from kbs.sessions import SessionStore
    from kbs.storage import RedisStore

    ra, rb = RedisStore(redis_url), RedisStore(redis_url)
    try:
        a, b = SessionStore(ra), SessionStore(rb)
        for _ in range(5):
            s = await a.create("sample")
            got = await asyncio.gather(a.mark_attested(s, "token-a"), b.mark_attested(s, "token-b"))
            assert got[0].token == got[1].token
            assert got[0].token in ("token-a", "token-b")
            seen_b = await b.get(s.id)
            assert seen_b is not None and seen_b.token == got[0].token
        assert await ra.add("kbs", "k", b"1", ttl_s=5) is True
        assert await rb.add("kbs", "k", b"2", ttl_s=5) is False
        assert await ra.get("kbs", "k") == b"1"
    finally:
        await ra.close()
        await rb.close()
