from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.errors import SealedSecretError
from cdh.sealed_secret import LocalKekProvider, SecretUnsealer, parse_sealed_secret
from tests.cdh.conftest import DictResources, b64u

SECRET = b"the-plaintext-\x00\xff-value"


def jwk_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    n = key.public_key().public_numbers()
    return json.dumps(
        {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
    ).encode()


def seal(payload: Any, key: ec.EllipticCurvePrivateKey, kid: str, alg: str = "ES256") -> bytes:
    h = b64u(json.dumps({"alg": alg, "kid": kid}).encode())
    p = b64u(json.dumps(payload).encode() if not isinstance(payload, bytes) else payload)
    r, s = decode_dss_signature(key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"sealed.{h}.{p}.{b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}".encode()


def vault(name: str = "kbs:///default/cdh/secret", provider: str = "kbs") -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "type": "vault",
        "name": name,
        "provider": provider,
        "provider_settings": {},
        "annotations": {},
    }


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def res(key: ec.EllipticCurvePrivateKey) -> DictResources:
    return DictResources({"kbs:///default/cdh/secret": SECRET, "kbs:///default/cdh/sealkey": jwk_of(key)})


async def test_vault_with_kbs_key(key, res, tmp_path: Path) -> None:
    u = SecretUnsealer(res, key_dir=tmp_path)
    assert await u.unseal(seal(vault(), key, "kbs:///default/cdh/sealkey")) == SECRET
    assert res.calls == ["kbs:///default/cdh/sealkey", "kbs:///default/cdh/secret"]


async def test_forged_signature_refused_without_leaking(key, res, tmp_path: Path) -> None:
    u = SecretUnsealer(res, key_dir=tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SealedSecretError, match="signature does not verify") as ei:
        await u.unseal(seal(vault(), other, "kbs:///default/cdh/sealkey"))
    assert SECRET.hex() not in str(ei.value) and "kbs:///default/cdh/secret" not in res.calls
    # payload swapped after signing
    good = seal(vault(), key, "kbs:///default/cdh/sealkey").split(b".")
    good[2] = b64u(json.dumps(vault("kbs:///default/other/x")).encode()).encode()
    with pytest.raises(SealedSecretError, match="signature"):
        await u.unseal(b".".join(good))


async def test_local_key_file_and_path_escape(key, tmp_path: Path) -> None:
    kdir = tmp_path / "sealed-secret"
    kdir.mkdir()
    (kdir / "k1").write_bytes(jwk_of(key))
    (tmp_path / "outside").write_bytes(jwk_of(key))
    (kdir / "link").symlink_to(tmp_path / "outside")
    u = SecretUnsealer(DictResources({"kbs:///default/cdh/secret": SECRET}), key_dir=kdir)
    assert await u.unseal(seal(vault(), key, "k1")) == SECRET
    for kid in ("../outside", "/etc/passwd", "link", "a/../../outside", "nonexistent"):
        with pytest.raises(SealedSecretError):
            await u.unseal(seal(vault(), key, kid))


@pytest.mark.parametrize(
    "blob",
    [
        b"notsealed.a.b.c",
        b"sealed.a.b",
        b"sealed.a.b.c.d",
        b"sealed.%%%.b.c",
        b"sealed." + b"A" * (1 << 20),
        b"sealed.\xff.b.c",
        b"sealed." + b64u(b"[" * 100_000).encode() + b".e30.c2ln",  # nesting: RecursionError before
    ],
)
def test_malformed(blob: bytes) -> None:
    with pytest.raises(SealedSecretError):
        parse_sealed_secret(blob)


async def test_payload_checks(key, res, tmp_path: Path) -> None:
    u = SecretUnsealer(res, key_dir=tmp_path)
    kid = "kbs:///default/cdh/sealkey"
    cases = [
        ({**vault(), "version": "0.2.0"}, "version"),
        ({**vault(), "type": "other"}, "type"),
        ({**vault(), "extra": 1}, "unknown fields"),
        ({k: v for k, v in vault().items() if k != "name"}, "name"),
        (vault(provider="aliyun"), "unknown vault provider"),
        (b'{"version":"0.1.0","version":"0.1.0","type":"vault"}', "duplicate"),
        ([1, 2], "object"),
    ]
    for payload, msg in cases:
        with pytest.raises(SealedSecretError, match=msg):
            await u.unseal(seal(payload, key, kid))
    with pytest.raises(SealedSecretError, match="ES256"):
        await u.unseal(seal(vault(), key, kid, alg="ES384"))


async def test_kbs_key_not_ec(key, tmp_path: Path) -> None:
    u = SecretUnsealer(
        DictResources({"kbs:///a/b/k": b'{"kty":"RSA","n":"AQ","e":"AQAB"}'}), key_dir=tmp_path
    )
    with pytest.raises(SealedSecretError, match="P-256"):
        await u.unseal(seal(vault(), key, "kbs:///a/b/k"))


async def test_skip_verification_only_by_flag(key, tmp_path: Path, caplog, monkeypatch) -> None:
    res = DictResources({"kbs:///default/cdh/secret": SECRET})
    unsigned = seal(vault(), ec.generate_private_key(ec.SECP256R1()), "nobody")
    monkeypatch.setenv("SKIP_SEALED_SECRET_VERIFICATION", "true")  # must have no effect
    with pytest.raises(SealedSecretError):
        await SecretUnsealer(res, key_dir=tmp_path).unseal(unsigned)
    with caplog.at_level(logging.WARNING):
        assert await SecretUnsealer(res, key_dir=tmp_path, skip_verification=True).unseal(unsigned) == SECRET
    assert "INSECURE" in caplog.text


def envelope(kek_provider: LocalKekProvider, key_id: str, data: bytes, wrap: str) -> dict[str, Any]:
    dek = os.urandom(32)
    if wrap == "A256GCM":
        iv = os.urandom(12)
        enc = AESGCM(dek).encrypt(iv, data, None)
    else:
        iv = os.urandom(16)
        e = Cipher(algorithms.AES(dek), modes.CTR(iv)).encryptor()
        enc = e.update(data) + e.finalize()
    b = base64.b64encode
    return {
        "version": "0.1.0",
        "type": "envelope",
        "provider": "localfs",
        "key_id": key_id,
        "encrypted_key": b(kek_provider.encrypt(dek, key_id)).decode(),
        "encrypted_data": b(enc).decode(),
        "wrap_type": wrap,
        "iv": b(iv).decode(),
        "provider_settings": {},
        "annotations": {},
    }


@pytest.mark.parametrize("wrap", ["A256GCM", "A256CTR"])
async def test_envelope_local_kek(key, tmp_path: Path, wrap: str) -> None:
    kdir, sdir = tmp_path / "kms", tmp_path / "sealed"
    kdir.mkdir()
    sdir.mkdir()
    (kdir / "kek1").write_bytes(os.urandom(32))
    (sdir / "sig").write_bytes(jwk_of(key))
    kms = LocalKekProvider(kdir)
    u = SecretUnsealer(DictResources(), key_dir=sdir, kms={"localfs": kms})
    assert await u.unseal(seal(envelope(kms, "kek1", SECRET, wrap), key, "sig")) == SECRET
    # a different KEK cannot unwrap the DEK
    (kdir / "kek2").write_bytes(os.urandom(32))
    env = envelope(kms, "kek1", SECRET, wrap)
    env["key_id"] = "kek2"
    with pytest.raises(SealedSecretError, match="cannot unwrap"):
        await u.unseal(seal(env, key, "sig"))
    env = envelope(kms, "kek1", SECRET, wrap)
    env["provider"] = "aws"
    with pytest.raises(SealedSecretError, match="unknown envelope provider"):
        await u.unseal(seal(env, key, "sig"))
    env = envelope(kms, "kek1", SECRET, wrap)
    env["key_id"] = "../kms/kek1"
    with pytest.raises(SealedSecretError):
        await u.unseal(seal(env, key, "sig"))
