"""ocicrypt pieces: JWE unwrap (RSA-OAEP, RSA-OAEP-256, ECDH-ES+AxKW, GCM and CBC-HS content
encryption), private/public options, and the streaming AES-256-CTR + HMAC-SHA256 reader.

The JWE and layer ciphertexts here are built by a test-side encryptor written from
RFC 7516/7518 and reference oci.md §4.4; the skopeo-made ones are exercised in
test_trusted_pull.py, and test_reverse_direction checks that skopeo decrypts what
this encryptor makes (so both sides agree on the format).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as apad
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from image_pull.manifest import Descriptor
from image_pull.ocicrypt import (
    DecryptingReader,
    IntegrityError,
    InvalidEncryptedLayer,
    KeyUnavailable,
    LayerDecrypter,
    LayerKey,
    jwe_decrypt,
)


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def jwe_encrypt(
    plaintext: bytes, recipients: list[Any], *, alg_rsa: str = "RSA-OAEP", enc: str = "A256GCM"
) -> bytes:
    """General/flattened JSON serialization, as go-jose writes it."""
    cek_len = {"A256GCM": 32, "A128GCM": 16, "A128CBC-HS256": 32, "A256CBC-HS512": 64}[enc]
    cek = os.urandom(cek_len)
    protected = b64u(json.dumps({"enc": enc}).encode())
    recs = []
    for pub in recipients:
        if isinstance(pub, rsa.RSAPublicKey):
            h: hashes.HashAlgorithm = hashes.SHA1() if alg_rsa == "RSA-OAEP" else hashes.SHA256()
            ek = pub.encrypt(cek, apad.OAEP(mgf=apad.MGF1(h), algorithm=h, label=None))
            recs.append({"header": {"alg": alg_rsa}, "encrypted_key": b64u(ek)})
        else:
            eph = ec.generate_private_key(pub.curve)
            z = eph.exchange(ec.ECDH(), pub)
            alg = "ECDH-ES+A256KW"
            other = len(alg).to_bytes(4, "big") + alg.encode() + bytes(8) + (256).to_bytes(4, "big")
            kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
            n = eph.public_key().public_numbers()
            size = (pub.curve.key_size + 7) // 8
            epk = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64u(n.x.to_bytes(size, "big")),
                "y": b64u(n.y.to_bytes(size, "big")),
            }
            recs.append({"header": {"alg": alg, "epk": epk}, "encrypted_key": b64u(aes_key_wrap(kek, cek))})
    aad = protected.encode()
    if enc.endswith("GCM"):
        iv = os.urandom(12)
        ct_tag = AESGCM(cek).encrypt(iv, plaintext, aad)
        ct, tag = ct_tag[:-16], ct_tag[-16:]
    else:
        iv = os.urandom(16)
        half = cek_len // 2
        p = padding.PKCS7(128).padder()
        e = Cipher(algorithms.AES(cek[half:]), modes.CBC(iv)).encryptor()
        ct = e.update(p.update(plaintext) + p.finalize()) + e.finalize()
        hname = {32: "sha256", 64: "sha512"}[cek_len]
        tag = hmac.new(cek[:half], aad + iv + ct + (len(aad) * 8).to_bytes(8, "big"), hname).digest()[:half]
    doc: dict[str, Any] = {"protected": protected, "iv": b64u(iv), "ciphertext": b64u(ct), "tag": b64u(tag)}
    if len(recs) == 1:
        doc.update(recs[0])
    else:
        doc["recipients"] = recs
    return json.dumps(doc).encode()


def encrypt_layer(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, privopts JSON, pubopts JSON) exactly as ocicrypt's AES_256_CTR_HMAC_SHA256."""
    key, nonce = os.urandom(32), os.urandom(16)
    e = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    ct = e.update(blob) + e.finalize()
    mac = hmac.new(key, ct, hashlib.sha256).digest()
    priv = json.dumps(
        {
            "symkey": base64.b64encode(key).decode(),
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "cipheroptions": {"nonce": base64.b64encode(nonce).decode()},
        }
    ).encode()
    pub = json.dumps(
        {"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": base64.b64encode(mac).decode(), "cipheroptions": {}}
    ).encode()
    return ct, priv, pub


def pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("alg_rsa", ["RSA-OAEP", "RSA-OAEP-256"])
@pytest.mark.parametrize("enc", ["A256GCM", "A128GCM", "A128CBC-HS256", "A256CBC-HS512"])
def test_jwe_rsa(alg_rsa: str, enc: str) -> None:
    jwe = jwe_encrypt(b"secret opts", [RSA.public_key()], alg_rsa=alg_rsa, enc=enc)
    assert jwe_decrypt(jwe, [RSA]) == b"secret opts"


def test_jwe_ecdh_es_and_multiple_recipients() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwe = jwe_encrypt(b"opts", [other.public_key(), EC.public_key()])
    assert b"recipients" in jwe
    assert jwe_decrypt(jwe, [EC]) == b"opts"
    assert jwe_decrypt(jwe, [RSA, other]) == b"opts"
    with pytest.raises(KeyUnavailable):
        jwe_decrypt(jwe, [RSA])


def test_jwe_tampering_and_malformed() -> None:
    jwe = json.loads(jwe_encrypt(b"opts", [RSA.public_key()]))
    ct = base64.urlsafe_b64decode(jwe["ciphertext"] + "==")
    bad = dict(jwe, ciphertext=b64u(bytes([ct[0] ^ 1]) + ct[1:]))  # always differs from ct
    with pytest.raises(KeyUnavailable, match="no decryption key fits"):
        jwe_decrypt(json.dumps(bad).encode(), [RSA])
    bad = dict(jwe, protected=b64u(b'{"enc":"A256GCM","zip":"DEF"}'))
    with pytest.raises(InvalidEncryptedLayer, match="zip"):
        jwe_decrypt(json.dumps(bad).encode(), [RSA])
    with pytest.raises(InvalidEncryptedLayer, match="duplicate"):
        jwe_decrypt(b'{"iv": "a", "iv": "b"}', [RSA])
    with pytest.raises(InvalidEncryptedLayer, match="unknown members"):
        jwe_decrypt(json.dumps(dict(jwe, extra=1)).encode(), [RSA])
    bad = dict(jwe, header={"alg": "dir"})
    with pytest.raises(InvalidEncryptedLayer, match="unsupported JWE key management"):
        jwe_decrypt(json.dumps(bad).encode(), [RSA])


def _desc(
    annotations: dict[str, str], mt: str = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
) -> Descriptor:
    return Descriptor(mt, "sha256:" + "c" * 64, 10, (), annotations)


async def test_layer_decrypter_and_reader_round_trip() -> None:
    blob = os.urandom(300_000)
    ct, priv, pub = encrypt_layer(blob)
    ann = {
        "org.opencontainers.image.enc.keys.jwe": base64.b64encode(
            jwe_encrypt(priv, [RSA.public_key()])
        ).decode(),
        "org.opencontainers.image.enc.pubopts": base64.b64encode(pub).decode(),
    }
    d = LayerDecrypter([pem(EC), pem(RSA)])
    key = await d.unwrap(_desc(ann))
    r = d.reader(io.BytesIO(ct), key)
    out = b"".join(iter(lambda: r.read(7777), b""))
    assert out == blob and r.verified
    # flipping any ciphertext bit fails the HMAC at EOF
    bad = bytearray(ct)
    bad[-1] ^= 0x80
    r = d.reader(io.BytesIO(bytes(bad)), key)
    with pytest.raises(IntegrityError, match="HMAC"):
        while r.read(65536):
            pass
    # truncated ciphertext: HMAC fails too
    r = d.reader(io.BytesIO(ct[:-1]), key)
    with pytest.raises(IntegrityError):
        r.drain()
    # HMAC right but the private options' digest names other content
    wrong = LayerKey(key.symkey, key.nonce, "sha256:" + "0" * 64, key.hmac)
    with pytest.raises(IntegrityError, match="digest"):
        DecryptingReader(io.BytesIO(ct), wrong).drain()


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.pop("org.opencontainers.image.enc.pubopts"), InvalidEncryptedLayer, "no public options"),
        (
            lambda a: a.update(
                {
                    "org.opencontainers.image.enc.pubopts": base64.b64encode(
                        b'{"cipher":"AES_256_CTR_HMAC_SHA256","cipheroptions":{}}'
                    ).decode()
                }
            ),
            InvalidEncryptedLayer,
            "not a base64",
        ),
        (
            lambda a: a.update(
                {
                    "org.opencontainers.image.enc.pubopts": base64.b64encode(
                        b'{"cipher":"AES_128_GCM","hmac":"' + base64.b64encode(bytes(32)) + b'"}'
                    ).decode()
                }
            ),
            InvalidEncryptedLayer,
            "unsupported layer cipher",
        ),
        (lambda a: a.pop("org.opencontainers.image.enc.keys.jwe"), InvalidEncryptedLayer, "no wrapped keys"),
        (
            lambda a: a.update({"org.opencontainers.image.enc.keys.jwe": "!!!"}),
            InvalidEncryptedLayer,
            "base64",
        ),
    ],
)
async def test_bad_annotations(mutate: Any, exc: type[Exception], match: str) -> None:
    _, priv, pub = encrypt_layer(b"x")
    ann = {
        "org.opencontainers.image.enc.keys.jwe": base64.b64encode(
            jwe_encrypt(priv, [RSA.public_key()])
        ).decode(),
        "org.opencontainers.image.enc.pubopts": base64.b64encode(pub).decode(),
    }
    mutate(ann)
    with pytest.raises(exc, match=match):
        await LayerDecrypter([pem(RSA)]).unwrap(_desc(ann))


async def test_key_provider_hook_and_private_options_strictness() -> None:
    _, priv, pub = encrypt_layer(b"x")

    class Provider:
        def __init__(self, answer: bytes) -> None:
            self.answer = answer
            self.seen: list[bytes] = []

        async def unwrap_key(self, annotation: bytes) -> bytes:
            self.seen.append(annotation)
            return self.answer

    ann = {
        "org.opencontainers.image.enc.keys.provider.attestation-agent": "cGFja2V0",
        "org.opencontainers.image.enc.pubopts": base64.b64encode(pub).decode(),
    }
    prov = Provider(priv)
    key = await LayerDecrypter([], prov).unwrap(_desc(ann))
    assert prov.seen == [b"cGFja2V0"] and len(key.symkey) == 32
    with pytest.raises(KeyUnavailable, match="configure a key provider"):
        await LayerDecrypter([pem(RSA)]).unwrap(_desc(ann))
    for bad in (
        b'{"symkey":"AA==","digest":"sha256:00","cipheroptions":{"nonce":"AA=="}}',
        json.dumps({**json.loads(priv), "extra": 1}).encode(),
        json.dumps({k: v for k, v in json.loads(priv).items() if k != "digest"}).encode(),
    ):
        with pytest.raises(InvalidEncryptedLayer):
            await LayerDecrypter([], Provider(bad)).unwrap(_desc(ann))

    class Failing:
        async def unwrap_key(self, annotation: bytes) -> bytes:
            raise RuntimeError("KBS said no")

    with pytest.raises(KeyUnavailable, match="no configured key"):
        await LayerDecrypter([], Failing()).unwrap(_desc(ann))


async def test_key_provider_refusal_keeps_the_reason_not_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """A KBS refusal (PolicyDeny) reaches the error and the log as class + message;
    anything that could be key material in that message does not."""
    _, _priv, pub = encrypt_layer(b"x")
    ann = {
        "org.opencontainers.image.enc.keys.provider.attestation-agent": "cGFja2V0",
        "org.opencontainers.image.enc.pubopts": base64.b64encode(pub).decode(),
    }
    secret = base64.b64encode(os.urandom(32)).decode()

    class KeyProviderError(Exception):
        pass

    class Denying:
        def __init__(self, msg: str) -> None:
            self.msg = msg

        async def unwrap_key(self, annotation: bytes) -> bytes:
            raise KeyProviderError(self.msg)

    deny = "cannot get the key 'kbs:///default/key/k1': KBS answered 401 PolicyDeny: Access denied by policy"
    caplog.set_level("INFO", logger="image_pull.ocicrypt")
    with pytest.raises(KeyUnavailable) as ei:
        await LayerDecrypter([], Denying(deny)).unwrap(_desc(ann))
    assert f"KeyProviderError: {deny}" in str(ei.value)
    assert f"KeyProviderError: {deny}" in caplog.text
    caplog.clear()
    leaky = f"unwrap failed with symkey {secret} and kek {os.urandom(16).hex()}\nsecond line"
    with pytest.raises(KeyUnavailable) as ei:
        await LayerDecrypter([], Denying(leaky)).unwrap(_desc(ann))
    text = str(ei.value) + caplog.text
    assert "unwrap failed with symkey [redacted]" in text and secret not in text
    assert "second line" not in text and "kek [redacted]" in text
    raw = repr(os.urandom(32))
    with pytest.raises(KeyUnavailable, match="message withheld") as ei:
        await LayerDecrypter([], Denying(f"bad key {raw}")).unwrap(_desc(ann))
    assert raw not in str(ei.value) + caplog.text


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_reverse_direction_skopeo_decrypts_our_format(tmp_path: Path) -> None:
    """A layer encrypted by the test-side encryptor (the format image_pull.ocicrypt reads)
    is decrypted by skopeo/ocicrypt: both sides agree on JWE, options and the CTR+HMAC cipher."""
    from tests.support.registry import OciLayout, layer_tar

    lay = OciLayout(tmp_path / "enc")
    tar = layer_tar([("hello.txt", "file", b"hello from python ocicrypt\n", 0o644)])
    desc, diff = lay.layer(tar, "gzip")
    gz = (lay.path / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes()
    ct, priv, pub = encrypt_layer(gz)
    enc = lay.blob(ct)
    annotations = {
        "org.opencontainers.image.enc.keys.jwe": base64.b64encode(
            jwe_encrypt(priv, [RSA.public_key()])
        ).decode(),
        "org.opencontainers.image.enc.pubopts": base64.b64encode(pub).decode(),
    }
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    }
    man = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **lay.blob(json.dumps(cfg).encode()),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                **enc,
                "annotations": annotations,
            }
        ],
    }
    mdesc = {"mediaType": man["mediaType"], **lay.blob(json.dumps(man).encode())}
    lay.index.append({**mdesc, "annotations": {"org.opencontainers.image.ref.name": "v1"}})
    lay.write_index()
    keyf = tmp_path / "k.pem"
    keyf.write_bytes(pem(RSA))
    out = tmp_path / "dec"
    cp = subprocess.run(
        ["skopeo", "copy", "--quiet", "--decryption-key", str(keyf), f"oci:{lay.path}:v1", f"oci:{out}:v1"],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr.decode()[-500:]
    idx = json.loads((out / "index.json").read_text())
    m = json.loads((out / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    assert m["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert (out / "blobs/sha256" / m["layers"][0]["digest"].split(":")[1]).read_bytes() == gz
