"""The five CDH services over ttRPC (hand-framed client) and gRPC; fixtures in inproc.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.aa import AaClient
from cdh.config import CdhConfig, KbcConfig
from cdh.hub import Hub, build_services
from coco_rpc import RpcError, connect, serve
from coco_rpc.protos import api_pb2, keyprovider_pb2
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2
from tests.cdh.conftest import DictResources
from tests.cdh.inproc import SECRET, Env
from tests.cdh.test_sealed_secret import seal, vault


async def test_get_resource(env: Env) -> None:
    code, msg, out = await env.acall(
        "api.GetResourceService",
        "GetResource",
        api_pb2.GetResourceRequest(ResourcePath="kbs:///default/cdh/secret").SerializeToString(),
    )
    assert code == 0 and api_pb2.GetResourceResponse.FromString(out).Resource == SECRET
    code, msg, _ = await env.acall(
        "api.GetResourceService",
        "GetResource",
        api_pb2.GetResourceRequest(ResourcePath="kbs:///default/cdh/none").SerializeToString(),
    )
    assert code == 13 and msg.startswith("[CDH] [ERROR]: Get Resource failed:")


async def test_unseal(env: Env) -> None:
    good = seal(vault(), env.key, "kbs:///default/cdh/sealkey")
    code, _, out = await env.acall(
        "api.SealedSecretService", "UnsealSecret", api_pb2.UnsealSecretInput(secret=good).SerializeToString()
    )
    assert code == 0 and api_pb2.UnsealSecretOutput.FromString(out).plaintext == SECRET
    forged = seal(vault(), ec.generate_private_key(ec.SECP256R1()), "kbs:///default/cdh/sealkey")
    code, msg, _ = await env.acall(
        "api.SealedSecretService",
        "UnsealSecret",
        api_pb2.UnsealSecretInput(secret=forged).SerializeToString(),
    )
    assert code == 13 and "signature" in msg and SECRET.hex() not in msg
    assert base64.b64encode(SECRET).decode() not in msg
    code, msg, _ = await env.acall(
        "api.SealedSecretService",
        "UnsealSecret",
        api_pb2.UnsealSecretInput(secret=b"sealed.garbage").SerializeToString(),
    )
    assert code == 13 and msg.startswith("[CDH] [ERROR]: ")


async def test_secure_mount(env: Env) -> None:
    dev = env.tmp / "vdb"
    dev.write_bytes(b"")
    req = api_pb2.SecureMountRequest(
        volume_type="block-device",
        mount_point=str(env.tmp / "mnt"),
        options={
            "devicePath": str(dev),
            "sourceType": "empty",
            "encryptionType": "luks2",
            "targetType": "fileSystem",
            "key": "kbs:///default/disk/key",
            "mapperName": "m1",
        },
    )
    code, msg, _ = await env.acall("api.SecureMountService", "SecureMount", req.SerializeToString())
    assert code == 0, msg
    assert env.rec.calls[1][1] == b"disk-key" and env.rec.mounted == {str(env.tmp / "mnt")}
    env.rec.fail_on = "luksOpen"
    dev2 = env.tmp / "vdc"
    dev2.write_bytes(b"")
    req.options["devicePath"] = str(dev2)
    req.options["mapperName"] = "m2"
    req.mount_point = str(env.tmp / "mnt2")
    code, msg, _ = await env.acall("api.SecureMountService", "SecureMount", req.SerializeToString())
    assert code == 13 and "luksOpen failed" in msg and "disk-key" not in msg
    assert env.rec.open_mappings == {"m1"} and len(list((env.tmp / "hdr").iterdir())) == 1
    # the first device is formatted now: asking for an empty source again is refused
    req.options["devicePath"] = str(dev)
    env.rec.fail_on = None
    code, msg, _ = await env.acall("api.SecureMountService", "SecureMount", req.SerializeToString())
    assert code == 13 and "already" in msg


async def test_unwrap_key_and_wrap_key(env: Env) -> None:
    iv = os.urandom(12)
    opts = b'{"cipher":"AES_256_CTR_HMAC_SHA256"}'
    pk = {
        "kid": "kbs:///default/image-kek/k1",
        "iv": base64.b64encode(iv).decode(),
        "wrap_type": "A256GCM",
        "wrapped_data": base64.b64encode(AESGCM(bytes(range(32))).encrypt(iv, opts, None)).decode(),
    }
    body = json.dumps(
        {
            "op": "keyunwrap",
            "keywrapparams": {},
            "keyunwrapparams": {"dc": None, "annotation": base64.b64encode(json.dumps(pk).encode()).decode()},
        }
    ).encode()
    inp = keyprovider_pb2.KeyProviderKeyWrapProtocolInput(KeyProviderKeyWrapProtocolInput=body)
    code, msg, out = await env.acall("keyprovider.KeyProviderService", "UnWrapKey", inp.SerializeToString())
    assert code == 0, msg
    res = json.loads(
        keyprovider_pb2.KeyProviderKeyWrapProtocolOutput.FromString(out).KeyProviderKeyWrapProtocolOutput
    )
    assert bytes(res["keyunwrapresults"]["optsdata"]) == opts
    code, msg, _ = await env.acall("keyprovider.KeyProviderService", "WrapKey", inp.SerializeToString())
    assert (code, msg) == (5, "/keyprovider.KeyProviderService/WrapKey is not supported")


async def test_pull_image_measures_exact_content(env: Env) -> None:
    req = api_pb2.ImagePullRequest(
        image_url="127.0.0.1:5000/library/busybox:1.36", bundle_path=str(env.tmp / "bundle")
    )
    code, msg, out = await env.acall("api.ImagePullService", "PullImage", req.SerializeToString())
    assert code == 0, msg
    digest = "sha256:" + "ab" * 32
    assert api_pb2.ImagePullResponse.FromString(out).manifest_digest == digest
    assert env.aa.events == [
        (
            "github.com/confidential-containers",
            "PullImage",
            '{"image":"127.0.0.1:5000/library/busybox:1.36", "digest":"' + digest + '"}',
        )
    ]
    puller = env.hub.images._puller
    assert puller.config.work_dir == env.tmp / "work"
    # NOT_ENABLED only warns
    env.aa.result = aa_pb2.NOT_ENABLED
    code, msg, _ = await env.acall("api.ImagePullService", "PullImage", req.SerializeToString())
    assert code == 0, msg
    # an AA error fails the pull
    env.aa.result = -1
    code, msg, _ = await env.acall("api.ImagePullService", "PullImage", req.SerializeToString())
    assert code == 13 and "event log" in msg
    env.aa.result = aa_pb2.OK
    puller.fail = True
    code, msg, _ = await env.acall("api.ImagePullService", "PullImage", req.SerializeToString())
    assert code == 13 and msg.startswith("[CDH] [ERROR]: Pull Image failed:")
    assert len(puller.pulls) == 3 and len(env.aa.events) == 3


async def test_oversize_and_unknown(env: Env) -> None:
    big = api_pb2.UnsealSecretInput(secret=b"x" * (5 << 20)).SerializeToString()
    code, msg, _ = await env.acall("api.SealedSecretService", "UnsealSecret", big)
    assert code == 3 and msg.startswith("message length ") and msg.endswith("size of 4194304")
    mid = api_pb2.UnsealSecretInput(secret=b"sealed." + b"x" * (2 << 20)).SerializeToString()
    code, msg, _ = await env.acall("api.SealedSecretService", "UnsealSecret", mid)
    assert code == 13 and "larger than" in msg
    code, msg, _ = await env.acall("api.GetResourceService", "Nope", b"")
    assert (code, msg) == (12, "Nope method")
    # the server still answers afterwards
    code, _, _ = await env.acall(
        "api.GetResourceService",
        "GetResource",
        api_pb2.GetResourceRequest(ResourcePath="kbs:///default/cdh/secret").SerializeToString(),
    )
    assert code == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_grpc_transport(tmp_path: Path) -> None:
    port = _free_port()
    cfg = CdhConfig(
        kbc=KbcConfig("offline_fs_kbc"), socket=f"127.0.0.1:{port}", aa_socket=f"unix://{tmp_path}/none.sock"
    )
    hub = Hub(cfg, resources=DictResources({"kbs:///a/b/c": b"grpc-value"}), aa=AaClient(cfg.aa_socket))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg.socket, build_services(hub), stop=stop))
    client = connect(cfg.socket)
    try:
        for _ in range(100):
            try:
                r = await client.call(
                    "api.GetResourceService",
                    "GetResource",
                    api_pb2.GetResourceRequest(ResourcePath="kbs:///a/b/c"),
                    api_pb2.GetResourceResponse,
                    timeout=5,
                )
                break
            except RpcError as exc:
                if exc.code != 14:
                    raise
                await asyncio.sleep(0.05)
        assert r.Resource == b"grpc-value"
        with pytest.raises(RpcError) as ei:
            await client.call(
                "api.GetResourceService",
                "GetResource",
                api_pb2.GetResourceRequest(ResourcePath="kbs:///a/b/missing"),
                api_pb2.GetResourceResponse,
                timeout=5,
            )
        assert ei.value.message.startswith("[CDH] [ERROR]: ")
    finally:
        await client.close()
        stop.set()
        await task
        await hub.close()
