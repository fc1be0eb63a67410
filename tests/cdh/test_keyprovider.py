from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.errors import KeyProviderError
from cdh.keyprovider import KbsKeyProvider, parse_annotation_packet
from tests.cdh.conftest import DictResources

OPTS = json.dumps({"cipher": "AES_256_CTR_HMAC_SHA256", "key": "a2V5", "cipheroptions": {}}).encode()


def request(packet: dict[str, object]) -> bytes:
    ann = base64.b64encode(json.dumps(packet).encode()).decode()
    return json.dumps(
        {"op": "keyunwrap", "keywrapparams": {}, "keyunwrapparams": {"dc": None, "annotation": ann}}
    ).encode()


def packet(kek: bytes, wrap: str, kid: str = "kbs:///default/image-kek/k1") -> dict[str, object]:
    if wrap == "A256GCM":
        iv = os.urandom(12)
        wrapped = AESGCM(kek).encrypt(iv, OPTS, None)
    else:
        iv = os.urandom(16)
        e = Cipher(algorithms.AES(kek), modes.CTR(iv)).encryptor()
        wrapped = e.update(OPTS) + e.finalize()
    return {
        "kid": kid,
        "wrapped_data": base64.b64encode(wrapped).decode(),
        "iv": base64.b64encode(iv).decode(),
        "wrap_type": wrap,
    }


@pytest.mark.parametrize("wrap", ["A256GCM", "A256CTR"])
async def test_unwrap_returns_integer_array(wrap: str) -> None:
    kek = os.urandom(32)
    u = KbsKeyProvider(DictResources({"kbs:///default/image-kek/k1": kek}))
    out = await u.handle_request(request(packet(kek, wrap)))
    doc = json.loads(out)
    arr = doc["keyunwrapresults"]["optsdata"]
    assert isinstance(arr, list) and all(isinstance(x, int) for x in arr)
    assert bytes(arr) == OPTS
    assert out.startswith(b'{"keyunwrapresults":{"optsdata":[')


async def test_unwrap_errors() -> None:
    kek = os.urandom(32)
    u = KbsKeyProvider(
        DictResources({"kbs:///default/image-kek/k1": kek, "kbs:///default/short/k": b"x" * 16})
    )
    with pytest.raises(KeyProviderError, match="authentication failed"):
        await u.handle_request(request(packet(os.urandom(32), "A256GCM")))
    with pytest.raises(KeyProviderError, match="cannot get the key"):
        await u.handle_request(request(packet(kek, "A256GCM", kid="kbs:///default/image-kek/none")))
    with pytest.raises(KeyProviderError, match="32-byte key"):
        await u.handle_request(request(packet(kek, "A256GCM", kid="kbs:///default/short/k")))
    p = packet(kek, "A256GCM")
    p["wrap_type"] = "A128KW"
    with pytest.raises(KeyProviderError, match="unsupported wrap type"):
        await u.handle_request(request(p))
    p = packet(kek, "A256GCM")
    p["provider"] = "aliyun"
    with pytest.raises(KeyProviderError, match="unknown key provider"):
        await u.handle_request(request(p))
    for bad in (
        b"{}",
        b'{"op":"keywrap"}',
        b'{"op":"keyunwrap","keyunwrapparams":{"annotation":"***"}}',
        b"\xff",
        b"x" * (2 << 20),
    ):
        with pytest.raises(KeyProviderError):
            await u.handle_request(bad)


def test_packet_defaults_and_strictness() -> None:
    p = parse_annotation_packet(
        b'{"kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"AA==","wrap_type":"A256GCM"}'
    )
    assert (p.provider, p.version) == ("kbs", "0.1.0")
    with pytest.raises(KeyProviderError, match="unknown fields"):
        parse_annotation_packet(b'{"kid":"k","wrapped_data":"","iv":"","wrap_type":"A256GCM","x":1}')
    with pytest.raises(KeyProviderError, match="version"):
        parse_annotation_packet(b'{"kid":"k","wrapped_data":"","iv":"","wrap_type":"A256GCM","version":"9"}')


async def test_image_pull_hook_form() -> None:
    kek = os.urandom(32)
    u = KbsKeyProvider(DictResources({"kbs:///default/image-kek/k1": kek}))
    pk = json.dumps(packet(kek, "A256GCM")).encode()
    assert await u.unwrap_key(base64.b64encode(pk)) == OPTS
    assert await u.unwrap_key(pk) == OPTS
    with pytest.raises(KeyProviderError):
        await u.unwrap_key(b"%%%")


async def test_annotation_as_byte_array() -> None:
    kek = os.urandom(32)
    u = KbsKeyProvider(DictResources({"kbs:///default/image-kek/k1": kek}))
    pk = json.dumps(packet(kek, "A256CTR")).encode()
    body = {"op": "keyunwrap", "keyunwrapparams": {"annotation": list(pk)}}
    out = json.loads(await u.handle_request(json.dumps(body).encode()))
    assert bytes(out["keyunwrapresults"]["optsdata"]) == OPTS
    body["keyunwrapparams"]["annotation"] = [1, 300]
    with pytest.raises(KeyProviderError, match="lacks"):
        await u.handle_request(json.dumps(body).encode())


async def test_untrusted_names_are_quoted_in_errors(tmp_path) -> None:
    """A layer annotation comes from the registry: its kid must not inject lines
    into the error (and so the log)."""
    from cdh.errors import SealedSecretError
    from cdh.kbc import OfflineFsKbc
    from cdh.sealed_secret import SecretUnsealer
    from tests.cdh.test_sealed_secret import seal, vault

    kek = os.urandom(32)
    u = KbsKeyProvider(OfflineFsKbc([], env={}))  # a real KBC: its own errors quote too
    with pytest.raises(KeyProviderError) as ei:
        await u.handle_request(request(packet(kek, "A256GCM", kid="kbs:///a/b/c\nINFO forged")))
    assert "\n" not in str(ei.value)
    unsealer = SecretUnsealer(OfflineFsKbc([], env={}), key_dir=tmp_path, skip_verification=True)
    with pytest.raises(SealedSecretError) as ei2:
        signer = ec.generate_private_key(ec.SECP256R1())
        await unsealer.unseal(seal(vault(name="kbs:///x/y/z\nINFO forged"), signer, "k"))
    assert "\n" not in str(ei2.value)
