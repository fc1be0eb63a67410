"""End to end: reference KBS + attestation-agent (sample attester) +
confidential-data-hub, all real processes; the CDH is called over ttRPC by a
hand-framed client (tests.support.aa.ttrpc_call), not by coco_rpc."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.aa import AaClient
from cdh.errors import NoSuchResource
from cdh.kbc import CcKbc
from coco_rpc.protos import api_pb2, keyprovider_pb2
from tests.cdh.stack import Stack, start_stack
from tests.cdh.test_sealed_secret import jwk_of, seal, vault
from tests.support.aa import ttrpc_call

pytestmark = pytest.mark.slow

SECRET = os.urandom(33)
KEK = os.urandom(32)
SIGNER = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as s:
        s.set_resource("default/cdh/secret", SECRET)
        s.set_resource("default/cdh/sealkey", jwk_of(SIGNER))
        s.set_resource("default/image-kek/k1", KEK)
        yield s


def call(stack: Stack, service: str, method: str, msg: bytes) -> tuple[int, str, bytes]:
    assert stack.cdh_sock is not None
    return ttrpc_call(stack.cdh_sock, service, method, msg, timeout=60)


def get(stack: Stack, uri: str) -> tuple[int, str, bytes]:
    code, msg, out = call(
        stack,
        "api.GetResourceService",
        "GetResource",
        api_pb2.GetResourceRequest(ResourcePath=uri).SerializeToString(),
    )
    return code, msg, api_pb2.GetResourceResponse.FromString(out).Resource if code == 0 else b""


def test_get_resource(stack: Stack) -> None:
    for _ in range(3):
        code, msg, data = get(stack, "kbs:///default/cdh/secret")
        assert code == 0, msg
        assert data == SECRET
    code, msg, _ = get(stack, "kbs:///default/cdh/missing")
    assert code != 0 and msg.startswith("[CDH] [ERROR]: Get Resource failed")
    code, msg, _ = get(stack, "https://example.com/x")
    assert code != 0 and "not a KBS resource URI" in msg


def test_unseal_secret(stack: Stack) -> None:
    good = seal(vault(), SIGNER, "kbs:///default/cdh/sealkey")
    code, msg, out = call(
        stack,
        "api.SealedSecretService",
        "UnsealSecret",
        api_pb2.UnsealSecretInput(secret=good).SerializeToString(),
    )
    assert code == 0, msg
    assert api_pb2.UnsealSecretOutput.FromString(out).plaintext == SECRET
    forged = seal(vault(), ec.generate_private_key(ec.SECP256R1()), "kbs:///default/cdh/sealkey")
    code, msg, _ = call(
        stack,
        "api.SealedSecretService",
        "UnsealSecret",
        api_pb2.UnsealSecretInput(secret=forged).SerializeToString(),
    )
    assert code == 13 and "signature" in msg
    assert SECRET.hex() not in msg and base64.b64encode(SECRET).decode() not in msg


def test_unwrap_key(stack: Stack) -> None:
    iv = os.urandom(12)
    opts = b'{"cipher":"AES_256_CTR_HMAC_SHA256","key":"c2VjcmV0"}'
    packet = {
        "kid": "kbs:///default/image-kek/k1",
        "wrapped_data": base64.b64encode(AESGCM(KEK).encrypt(iv, opts, None)).decode(),
        "iv": base64.b64encode(iv).decode(),
        "wrap_type": "A256GCM",
    }
    req = {
        "op": "keyunwrap",
        "keywrapparams": {},
        "keyunwrapparams": {"dc": None, "annotation": base64.b64encode(json.dumps(packet).encode()).decode()},
    }
    inp = keyprovider_pb2.KeyProviderKeyWrapProtocolInput(
        KeyProviderKeyWrapProtocolInput=json.dumps(req).encode()
    )
    code, msg, out = call(stack, "keyprovider.KeyProviderService", "UnWrapKey", inp.SerializeToString())
    assert code == 0, msg
    body = keyprovider_pb2.KeyProviderKeyWrapProtocolOutput.FromString(out).KeyProviderKeyWrapProtocolOutput
    assert bytes(json.loads(body)["keyunwrapresults"]["optsdata"]) == opts


def test_secure_mount_bad_request_is_clear(stack: Stack) -> None:
    req = api_pb2.SecureMountRequest(
        volume_type="block-device",
        mount_point="/tmp/never-mounted",
        options={
            "devicePath": "/dev/does-not-exist",
            "sourceType": "empty",
            "encryptionType": "luks2",
            "targetType": "fileSystem",
        },
    )
    code, msg, _ = call(stack, "api.SecureMountService", "SecureMount", req.SerializeToString())
    assert code == 13 and "does not exist" in msg


async def test_token_reused_against_real_aa_and_kbs(stack: Stack) -> None:
    """In process: CcKbc + AaClient against the real AA and KBS."""
    aa = AaClient(f"unix://{stack.aa_sock}")
    kbc = CcKbc(stack.kbs_url, lambda: aa.get_token("kbs"))
    rc = kbc.resource_client()
    try:
        got = await asyncio.gather(*(kbc.get_resource("kbs:///default/cdh/secret") for _ in range(5)))
        assert got == [SECRET] * 5
        assert await kbc.get_resource("kbs:///default/image-kek/k1") == KEK
        assert rc.handshakes == 1
        with pytest.raises(NoSuchResource):
            await kbc.get_resource("kbs:///default/cdh/missing")
        # trustee answers a missing resource with 401: as upstream, that re-attests (3 requests)
        assert rc.handshakes == 3
        # a token the KBS rejects is replaced
        cur = await rc.attestation()
        assert rc.handshakes == 4
        rc._current = dataclasses.replace(cur, token=cur.token[:-4] + "AAAA", expires_at=None)
        assert await kbc.get_resource("kbs:///default/cdh/secret") == SECRET
        assert rc.handshakes == 5
    finally:
        await kbc.close()
        await aa.close()


async def test_kbc_tokens_come_from_a_preset_aa_socket(stack: Stack, tmp_path: Path) -> None:
    """As upstream's cc_kbc plugin: the KBS token comes from the AA at AA_SOCKET
    when the environment sets it, not from [aa] aa_socket."""
    from cdh.config import CdhConfig, KbcConfig
    from cdh.errors import TokenUnavailable
    from cdh.hub import Hub

    cfg = CdhConfig(kbc=KbcConfig("cc_kbc", stack.kbs_url), aa_socket=f"unix://{tmp_path}/no-aa.sock")
    hub = Hub(cfg, env={"AA_SOCKET": f"unix://{stack.aa_sock}"})
    try:
        assert await hub.get_resource("kbs:///default/cdh/secret") == SECRET
    finally:
        await hub.close()
    hub = Hub(cfg, env={})
    try:
        with pytest.raises(TokenUnavailable):
            await hub.get_resource("kbs:///default/cdh/secret")
    finally:
        await hub.close()


def test_cdh_survives_without_aa(tmp_path: Path) -> None:
    """AA absent: GetResource fails clearly, the CDH keeps serving."""
    s = Stack(tmp_path)
    try:
        s.start_kbs()
        s.aa_sock = tmp_path / "no-aa.sock"
        s.start_cdh()
        code, msg, _ = get(s, "kbs:///default/cdh/secret")
        assert code == 13 and "attestation agent" in msg
        code, msg, _ = get(s, "kbs:///default/cdh/secret")
        assert code == 13
    finally:
        s.close()


def test_logs_do_not_leak_secrets(stack: Stack) -> None:
    code, _, _ = get(stack, "kbs:///default/cdh/secret")
    assert code == 0
    forged = seal(vault(), ec.generate_private_key(ec.SECP256R1()), "kbs:///default/cdh/sealkey")
    call(
        stack,
        "api.SealedSecretService",
        "UnsealSecret",
        api_pb2.UnsealSecretInput(secret=forged).SerializeToString(),
    )
    log = (stack.tmp / "cdh.log").read_bytes()
    assert b"Get Resource failed" in log or b"Unseal Secret failed" in log  # failures are logged...
    for needle in (
        SECRET,
        SECRET.hex().encode(),
        base64.b64encode(SECRET),
        KEK.hex().encode(),
        base64.b64encode(KEK),
    ):
        assert needle not in log  # ...secrets are not
