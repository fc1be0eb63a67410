"""Storage that a trustee v0.21 KBS can share: the on-store layouts (LocalFs, LocalJson, Redis,
PostgreSQL) and the session and reference-value records, byte for byte as trustee's
``deps/key-value-storage``, ``kbs/src/attestation/session.rs`` and ``rvps/src/reference_value.rs``
write them; two KBS replicas on one real PostgreSQL serve one RCAR session; the PostgreSQL
store survives a server restart."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kbs.errors import StorageError
from kbs.rvps import ReferenceValues, decode_reference_value
from kbs.sessions import Session, SessionStore
from kbs.storage import LocalFsStore, LocalJsonStore, PostgresStore
from kbs_client.rcar import auth_body
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from tests.support.kbs import start_kbs
from tests.support.postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]  # re-exported fixture

#: a session record as trustee v0.21 writes it (serde_json of SessionStatus::Authed, time rfc3339)
TRUSTEE_AUTHED = (
    b'{"Authed":{"request":{"version":"0.4.0","tee":"sample","extra-params":""},'
    b'"challenge":{"nonce":"bm9uY2U=","extra-params":""},"id":"0123456789abcdef0123456789abcdef",'
    b'"timeout":"2099-01-02T03:04:05.123456789Z"}}'
)


async def test_localjson_layout_is_trustees(tmp_path: Path) -> None:
    st = LocalJsonStore(str(tmp_path))
    await st.set("repository", "default/key/k1", b"\xfb\xff secret")
    doc = json.loads((tmp_path / "repository").read_bytes())
    # one JSON object per namespace file; values URL-safe base64 with padding (Rust's URL_SAFE)
    assert doc == {"default/key/k1": base64.urlsafe_b64encode(b"\xfb\xff secret").decode()}
    assert "-" in doc["default/key/k1"] or "_" in doc["default/key/k1"]
    # a file trustee wrote is read as is
    (tmp_path / "reference_value").write_text(json.dumps({"svn": base64.urlsafe_b64encode(b"1").decode()}))
    assert await st.get("reference_value", "svn") == b"1"
    assert await st.keys("repository") == ["default/key/k1"]
    assert (
        await st.delete("repository", "default/key/k1")
        and json.loads((tmp_path / "repository").read_text()) == {}
    )
    (tmp_path / "repository").write_text("[1]")
    with pytest.raises(Exception, match="not a JSON object"):
        await st.get("repository", "x")


async def test_localjson_values_decode_as_trustees_url_safe(tmp_path: Path) -> None:
    """trustee reads LocalJson values with Rust's ``URL_SAFE`` engine: URL-safe alphabet,
    canonical padding. A value outside that is an error, not bytes a lenient decoder
    made up by dropping characters or guessing the padding."""
    st = LocalJsonStore(str(tmp_path))
    good = base64.urlsafe_b64encode(b"\xfb\xff!").decode()
    for bad in ("+/8h", "-_8", "-_8h!", "-.8h", "-_9=", "-_8h===="):
        (tmp_path / "repository").write_text(json.dumps({"k": good, "bad": bad}))
        assert await st.get("repository", "k") == b"\xfb\xff!"
        with pytest.raises(StorageError, match="not base64"):
            await st.get("repository", "bad")


async def test_sessions_are_stored_as_trustee_records(tmp_path: Path) -> None:
    fs = LocalFsStore(str(tmp_path))
    sessions = SessionStore(fs, timeout_min=5)
    s = await sessions.create("sample")
    # plain file in trustee's LocalFs layout (no private TTL side file), trustee's JSON
    rec = json.loads((tmp_path / "kbs_protocol_session" / s.id).read_bytes())
    assert list(rec) == ["Authed"]
    body = rec["Authed"]
    assert body["request"] == {"version": "0.4.0", "tee": "sample", "extra-params": ""}
    assert body["challenge"] == {"nonce": s.nonce, "extra-params": ""} and body["id"] == s.id
    assert body["timeout"].endswith("Z") and body["timeout"][:4].isdigit()
    done = await sessions.mark_attested(s, "hdr.claims.sig")
    rec = json.loads((tmp_path / "kbs_protocol_session" / s.id).read_bytes())
    assert rec == {"Attested": {"token": "hdr.claims.sig", "id": s.id, "timeout": body["timeout"]}}
    assert (await sessions.get(s.id)) is not None and done.attested
    # a session trustee wrote is usable here
    (tmp_path / "kbs_protocol_session" / "0123456789abcdef0123456789abcdef").write_bytes(TRUSTEE_AUTHED)
    t = await sessions.get("0123456789abcdef0123456789abcdef")
    assert t is not None and (t.tee, t.nonce, t.hash_algorithm) == ("sample", "bm9uY2U=", "sha384")
    assert t.expires_at == pytest.approx(4071006245.123456789)  # 2099-01-02T03:04:05.123456789Z
    # expired records are removed by purge (trustee's cleanup_expired), unparsable ones left alone
    (tmp_path / "kbs_protocol_session" / "ffffffffffffffffffffffffffffffff").write_bytes(b"junk")
    assert await sessions.purge_expired(now=time.time() + 3600) == 1
    assert sorted(os.listdir(tmp_path / "kbs_protocol_session")) == [
        "0123456789abcdef0123456789abcdef",
        "ffffffffffffffffffffffffffffffff",
    ]
    assert Session.from_bytes(TRUSTEE_AUTHED).id == "0123456789abcdef0123456789abcdef"


async def test_reference_values_are_stored_as_trustee_records(tmp_path: Path) -> None:
    fs = LocalFsStore(str(tmp_path))
    rv = ReferenceValues(fs)
    payload = base64.b64encode(b'{"svn": ["1"]}').decode()
    await rv.register(
        json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode(), now=0.0
    )
    rec = json.loads((tmp_path / "reference_value" / "svn").read_bytes())
    assert rec == {"version": "0.1.0", "name": "svn", "expiration": "1971-01-01T00:00:00Z", "value": ["1"]}
    # trustee's record (no version member: serde default) is read
    (tmp_path / "reference_value" / "x").write_text(
        '{"name":"x","expiration":"2099-01-01T00:00:00Z","value":"v"}'
    )
    assert await rv.get("x") == "v"
    assert decode_reference_value(b'{"name":"x","expiration":"2099-01-01T00:00:00Z","value":1}')[1] == 1


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    yield postgres_server


async def test_postgres_layout_and_reconnect(pg: PostgresServer) -> None:
    import psycopg

    st = PostgresStore.from_config(pg.db, pg.user, None, pg.host, pg.port)
    try:
        await st.set("repository", "default/key/k1", b"v1")
        await st.set("repository", "default/key/k1", b"v2")  # upsert, as trustee's overwrite
        assert await st.get("repository", "default/key/k1") == b"v2"
        assert await st.keys("repository") == ["default/key/k1"]
        # trustee's table shape: one table per namespace, key TEXT PRIMARY KEY, value BYTEA
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, dbname=pg.db) as c:
            cols = c.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'repository'"
                " ORDER BY column_name"
            ).fetchall()
            assert cols == [("key", "text"), ("value", "bytea")]
            # a row trustee wrote is read
            c.execute("INSERT INTO repository (key, value) VALUES ('a/b/c', %s)", (b"from-trustee",))
            c.commit()
        assert await st.get("repository", "a/b/c") == b"from-trustee"
        with pytest.raises(Exception, match="invalid storage key"):
            await st.set("repository", "bad key; DROP TABLE repository", b"x")
        # the server restarts: the next call reconnects, nothing to do for the KBS
        pg.restart()
        assert await st.get("repository", "default/key/k1") == b"v2"
        # while it is down, calls fail with a typed error, then work again once it is back
        pg.stop()
        from kbs.errors import StorageError

        with pytest.raises(StorageError, match="unavailable"):
            await st.get("repository", "default/key/k1")
        pg.start()
        assert await st.delete("repository", "default/key/k1") is True
        assert await st.get("repository", "default/key/k1") is None
    finally:
        await st.close()


def test_two_replicas_share_one_session_on_postgres(tmp_path: Path, pg: PostgresServer) -> None:
    import psycopg

    secret = b"pg-shared-" + os.urandom(8).hex().encode()
    common = {"storage": "Postgres", "signer_key": True, "extra_toml": pg.toml()}
    with (
        start_kbs(tmp_path, policy="allow_all", **common) as a,
        start_kbs(tmp_path, policy=None, **common) as b,
    ):
        b.set_resource("default/key/shared", secret)  # written through B
        key = TeeKeyPair.generate()
        with httpx.Client(timeout=30) as c:
            r = c.post(f"{a.url}/kbs/v0/auth", json=auth_body("sample"))  # auth on A
            assert r.status_code == 200
            sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
            c.cookies.clear()
            rd = hash_canonical(
                "sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()}
            )
            body = {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                    "tee-evidence": {"primary_evidence": sample_evidence(rd), "additional_evidence": ""}}  # fmt: skip
            cookie = {"Cookie": f"kbs-session-id={sid}"}
            r = c.post(f"{b.url}/kbs/v0/attest", content=json.dumps(body).encode(), headers=cookie)  # on B
            assert r.status_code == 200, r.text
            c.cookies.clear()
            r = c.get(f"{a.url}/kbs/v0/resource/default/key/shared", headers=cookie)  # fetched from A
            assert r.status_code == 200, r.text
            assert key.decrypt(r.json()) == secret
    with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, dbname=pg.db) as conn:
        (raw,) = conn.execute("SELECT value FROM kbs_protocol_session WHERE key = %s", (sid,)).fetchone() or (
            None,
        )
        assert raw is not None and list(json.loads(bytes(raw))) == ["Attested"]
        (val,) = conn.execute("SELECT value FROM repository WHERE key = 'default/key/shared'").fetchone() or (
            None,
        )
        assert val is not None and bytes(val) == secret
