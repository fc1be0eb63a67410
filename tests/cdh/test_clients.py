"""cdh-oneshot and api-server-rest against an in-process CDH (see test_rpc.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from cdh import oneshot
from cdh.api_server_rest import _loopback, make_app
from tests.cdh.inproc import SECRET, Env
from tests.cdh.test_sealed_secret import seal, vault


async def test_oneshot_get_resource_and_unseal(env: Env, tmp_path: Path, capsysbinary) -> None:
    sock = f"unix://{env.sock}"
    out = tmp_path / "out"
    rc = await asyncio.to_thread(
        oneshot.main,
        ["--socket", sock, "-o", str(out), "get-resource", "--resource-uri", "kbs:///default/cdh/secret"],
    )
    assert rc == 0 and out.read_bytes() == SECRET
    sp = tmp_path / "sealed"
    sp.write_bytes(seal(vault(), env.key, "kbs:///default/cdh/sealkey") + b"\n")
    rc = await asyncio.to_thread(
        oneshot.main, ["--socket", sock, "-o", str(out), "unseal-secret", "--secret-path", str(sp)]
    )
    assert rc == 0 and out.read_bytes() == SECRET
    rc = await asyncio.to_thread(
        oneshot.main, ["--socket", sock, "get-resource", "--resource-uri", "kbs:///x/y/z"]
    )
    assert rc == 1
    assert b"[CDH] [ERROR]: Get Resource failed" in capsysbinary.readouterr().err
    rc = await asyncio.to_thread(
        oneshot.main,
        ["--socket", sock, "pull-image", "--image-url", "r/i:1", "--bundle-path", str(tmp_path / "b")],
    )
    assert rc == 0 and capsysbinary.readouterr().out == b"image digest: sha256:" + b"ab" * 32 + b"\n"
    rc = await asyncio.to_thread(
        oneshot.main, ["--socket", sock, "get-resource", "-r", "kbs:///default/cdh/secret"]
    )
    assert rc == 0 and base64.b64decode(capsysbinary.readouterr().out) == SECRET  # upstream prints base64


@pytest.fixture
async def rest(env: Env):
    app = make_app(f"unix://{env.sock}", f"unix://{env.aa_sock}", "all")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with ClientSession(base_url=f"http://127.0.0.1:{server.port}") as s:
        yield s
    await server.close()


async def test_rest_resource_and_aa(rest: ClientSession, env: Env) -> None:
    r = await rest.get("/cdh/resource/default/cdh/secret")
    assert r.status == 200 and await r.read() == SECRET
    assert r.headers["Content-Type"] == "application/octet-stream"
    r = await rest.get("/cdh/resource/default/cdh/none")
    assert r.status == 500 and "[CDH] [ERROR]" in await r.text()
    r = await rest.get("/cdh/resource/too/short")
    assert r.status == 404
    r = await rest.get("/aa/token", params={"token_type": "kbs"})
    assert r.status == 200 and json.loads(await r.read())["token"] == "t"
    assert (await rest.get("/aa/token")).status == 400
    r = await rest.get("/aa/evidence", params={"runtime_data": "hello"})
    assert json.loads(await r.read()) == {"report_data": b"hello".hex()}
    enc = base64.urlsafe_b64encode(b"\x00\xff\x01").rstrip(b"=").decode()
    r = await rest.get("/aa/evidence", params={"runtime_data": enc, "encoding": "base64"})
    assert json.loads(await r.read()) == {"report_data": "00ff01"}
    assert (await rest.get("/aa/evidence")).status == 400
    r = await rest.get("/aa/additional-evidence", params={"runtime_data": "x"})
    assert r.status == 200 and await r.read() == b""
    r = await rest.post("/aa/aael", json={"domain": "d", "operation": "o", "content": "c"})
    assert r.status == 200 and env.aa.events[-1] == ("d", "o", "c")
    assert (await rest.post("/aa/aael", data=b"{}")).status == 400
    info = await (await rest.get("/info")).json()
    assert info["tee"] == "sample" and info["feature"] == "all"
    assert (await rest.get("/nope")).status == 404


async def test_rest_aael_and_runtime_data_parsed_strictly(rest: ClientSession, env: Env) -> None:
    """What gets extended into the event log must be exactly what was sent:
    a duplicated key or a mangled base64 is a 400, not a silent pick."""
    dup = b'{"domain":"d","operation":"o","content":"shown","content":"measured"}'
    assert (await rest.post("/aa/aael", data=dup)).status == 400
    assert (await rest.post("/aa/aael", data=b'{"domain":"d","operation":"o","content":NaN}')).status == 400
    assert (await rest.post("/aa/aael", data=b"[" * 60_000)).status == 400
    for bad in ("aGVsbG8$", "aGVs bG8", "aGVsbG8/"):
        r = await rest.get("/aa/evidence", params={"runtime_data": bad, "encoding": "base64"})
        assert r.status == 400, bad
    assert env.aa.events == []


async def test_rest_feature_gating(env: Env) -> None:
    app = make_app(f"unix://{env.sock}", f"unix://{env.aa_sock}", "resource")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession(base_url=f"http://127.0.0.1:{server.port}") as s:
            assert (await s.get("/aa/token", params={"token_type": "kbs"})).status == 404
            assert (await s.get("/cdh/resource/default/cdh/secret")).status == 200
    finally:
        await server.close()


def test_loopback_only() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.5.0.1")
    for peer in ("10.0.0.2", "192.168.1.1", "::ffff:10.0.0.1", "", None, "not-an-ip"):
        assert not _loopback(peer)


async def test_oneshot_secure_mount_and_unwrap_key(env: Env, tmp_path: Path) -> None:
    sock = f"unix://{env.sock}"
    dev = tmp_path / "vdz"
    dev.write_bytes(b"")
    spec = tmp_path / "storage.json"
    spec.write_text(
        json.dumps(
            {
                "volume_type": "block-device",
                "mount_point": str(tmp_path / "mnt"),
                "flags": [],
                "options": {
                    "devicePath": str(dev),
                    "sourceType": "encrypted",
                    "encryptionType": "luks2",
                    "targetType": "fileSystem",
                    "mapperName": "os1",
                    "key": "kbs:///default/disk/key",
                },
            }
        )
    )
    rc = await asyncio.to_thread(
        oneshot.main, ["--socket", sock, "secure-mount", "--storage-path", str(spec)]
    )
    assert rc == 0 and env.rec.mounted == {str(tmp_path / "mnt")}
    iv = bytes(12)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    pk = {
        "kid": "kbs:///default/image-kek/k1",
        "iv": base64.b64encode(iv).decode(),
        "wrap_type": "A256GCM",
        "wrapped_data": base64.b64encode(AESGCM(bytes(range(32))).encrypt(iv, b"{}", None)).decode(),
    }
    req = tmp_path / "req.json"
    req.write_text(
        json.dumps(
            {
                "op": "keyunwrap",
                "keywrapparams": {},
                "keyunwrapparams": {"annotation": base64.b64encode(json.dumps(pk).encode()).decode()},
            }
        )
    )
    out = tmp_path / "out.json"
    rc = await asyncio.to_thread(
        oneshot.main, ["--socket", sock, "-o", str(out), "unwrap-key", "--input", str(req)]
    )
    assert rc == 0 and json.loads(out.read_text()) == {"keyunwrapresults": {"optsdata": [123, 125]}}


async def test_api_server_rest_process(env: Env, tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from tests.cdh.stack import free_port

    port = free_port()
    exe = str(Path(sys.executable).parent / "api-server-rest")
    log = (tmp_path / "rest.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            "-b",
            f"127.0.0.1:{port}",
            "-f",
            "resource",
            "-c",
            f"unix://{env.sock}",
            "-a",
            f"unix://{env.aa_sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as h:
            for _ in range(200):
                try:
                    r = await h.get("/cdh/resource/default/cdh/secret")
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None, (tmp_path / "rest.log").read_text()
                    await asyncio.sleep(0.05)
            assert r.status_code == 200 and r.content == SECRET
            assert (await h.get("/aa/token", params={"token_type": "kbs"})).status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_oneshot_in_process_like_upstream(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    store = tmp_path / "res.json"
    store.write_text(json.dumps({"default/k/v": base64.b64encode(b"offline").decode()}))
    cfg = tmp_path / "cdh.toml"
    cfg.write_text('[kbc]\nname = "offline_fs_kbc"\n')
    monkeypatch.setenv("OFFLINE_FS_KBC_EXTRA_FILE_PATH", str(store))
    monkeypatch.delenv("AA_KBC_PARAMS", raising=False)
    assert oneshot.main(["-c", str(cfg), "get-resource", "-r", "kbs:///default/k/v"]) == 0
    assert capsys.readouterr().out == base64.b64encode(b"offline").decode() + "\n"
    assert oneshot.main(["-c", str(cfg), "-r", "1", "get-resource", "-r", "kbs:///default/k/none"]) == 1
    assert "offline_fs_kbc has no resource" in capsys.readouterr().err
    assert [r.message for r in caplog.records if "Tried" in r.message] == [
        "Tried 1 times... get-resource failed: offline_fs_kbc has no resource default/k/none"
    ]
