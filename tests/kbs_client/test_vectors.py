"""Known-answer vectors from reference/kbs-protocol.md §3 and JWE behaviour (§5.4)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from kbs_client.rcar import attestation_body, device_report_data, primary_report_data
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol import jwe
from kbs_protocol.errors import JweError, TeeKeyError
from kbs_protocol.jcs import canonicalize, hash_canonical

NONCE = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.fixture
def ref_key() -> TeeKeyPair:
    return TeeKeyPair(ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1()), "ECDH-ES+A256KW")


def test_as_jcs_vector() -> None:
    got = hash_canonical("sha384", {"b": 1, "a": "test", "c": {"d": "e"}}).hex()
    assert got == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
    )


def test_reference_public_jwk(ref_key: TeeKeyPair) -> None:
    assert ref_key.public_jwk() == {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ECDH-ES+A256KW",
        "x": "n62Erq4Iu-9_AQAU2CzvagneKwz4cbXODE8dE6WaWTQ",
        "y": "B8tFdp8QcOLCRw_lsb_mMTPAsM3GTqS_N5Go7CoH_U8",
    }


def test_binding_case1_no_devices(ref_key: TeeKeyPair) -> None:
    jwk = ref_key.public_jwk()
    canon = canonicalize({"additional-evidence": "", "nonce": NONCE, "tee-pubkey": jwk})
    assert canon.startswith(b'{"additional-evidence":"","nonce":"AAECAw')
    d = primary_report_data("sha384", NONCE, jwk, "")
    assert d.hex() == (
        "a21ac82c047c1d76ff1e481382c975da145f89f17bc95731b9299cd0aa3d5bb69e564fdd554b279d9ba56d19789ddf1c"
    )
    assert (
        sample_evidence(d)["report_data"]
        == "ohrILAR8HXb/HkgTgsl12hRfifF7yVcxuSmc0Ko9W7aeVk/dVUsnnZulbRl4nd8c"
    )
    body = attestation_body(NONCE, jwk, sample_evidence(d), "")
    assert "init-data" not in body
    assert body["tee-evidence"] == {"primary_evidence": sample_evidence(d), "additional_evidence": ""}


def test_binding_case2_and_device(ref_key: TeeKeyPair) -> None:
    jwk = ref_key.public_jwk()
    a = json.dumps({"sampledevice": {"svn": "2", "report_data": "X"}}, separators=(",", ":"))
    assert primary_report_data("sha384", NONCE, jwk, a).hex() == (
        "c21f2f5dd533f1f4b34683a4b271de25c9cdf7e42651b5c5f458e868b3a7ec439bbbdcbcd3f5c63648a2b66ac05fbdc2"
    )
    assert device_report_data("sha384", NONCE, jwk).hex() == (
        "acacfbd8696cf22b4d381dfe17eca09d69541fadd8de68a0da0d0f917e9291b67c0aa8dcb22f48f6da5178b125992efb"
    )


@pytest.mark.parametrize("alg", ["ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256", "RSA1_5"])
def test_jwe_roundtrip_and_header_order(alg: str) -> None:
    k = TeeKeyPair.generate(alg)
    doc = jwe.encrypt(b"top secret", k.pubkey)
    assert set(doc) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header_raw = unb64u(doc["protected"])
    assert b" " not in header_raw
    header = json.loads(header_raw)
    keys = list(header)
    assert keys[:2] == ["alg", "enc"] and header["enc"] == "A256GCM"
    if alg.startswith("ECDH"):
        assert list(header["epk"]) == ["crv", "kty", "x", "y"]
    else:
        assert keys == ["alg", "enc"]
    assert len(unb64u(doc["iv"])) == 12 and len(unb64u(doc["tag"])) == 16
    assert k.decrypt(doc) == b"top secret"
    assert k.decrypt(json.dumps(doc)) == b"top secret"
    # the PEM survives a round trip (EC PKCS#8, RSA PKCS#1)
    pem = k.private_pem()
    assert ("BEGIN RSA PRIVATE KEY" in pem) == alg.startswith("RSA")
    assert TeeKeyPair.from_pem(pem, rsa_alg=k.algorithm).public_jwk() == k.public_jwk()


def _independent_ecdh_jwe(plaintext: bytes, jwk: dict[str, str]) -> dict[str, str]:
    """Written from RFC 7518 §4.6 / reference §5.4, without the package's code."""
    peer = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64u(jwk["x"]), "big"), int.from_bytes(unb64u(jwk["y"]), "big"), ec.SECP256R1()
    ).public_key()
    eph = ec.generate_private_key(ec.SECP256R1())
    z = eph.exchange(ec.ECDH(), peer)
    alg = b"ECDH-ES+A256KW"
    kek = hashlib.sha256(
        b"\0\0\0\1" + z + len(alg).to_bytes(4, "big") + alg + b"\0" * 8 + (256).to_bytes(4, "big")
    ).digest()
    cek = AESGCM.generate_key(256)
    n = eph.public_key().public_numbers()
    hdr = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM",
           "epk": {"crv": "P-256", "kty": "EC", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}}  # fmt: skip
    protected = b64u(json.dumps(hdr, separators=(",", ":")).encode())
    iv = b"\x07" * 12
    ct = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    return {"protected": protected, "encrypted_key": b64u(aes_key_wrap(kek, cek)), "iv": b64u(iv),
            "ciphertext": b64u(ct[:-16]), "tag": b64u(ct[-16:])}  # fmt: skip


def test_decrypts_independently_built_jwe() -> None:
    k = TeeKeyPair.generate()
    assert k.decrypt(_independent_ecdh_jwe(b"hello", k.public_jwk())) == b"hello"


def test_independent_rsa_oaep_decrypts_our_jwe() -> None:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k = TeeKeyPair(priv, "RSA-OAEP-256")
    doc = jwe.encrypt(b"abc", k.pubkey)
    cek = priv.decrypt(unb64u(doc["encrypted_key"]),
                       padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))  # fmt: skip
    pt = AESGCM(cek).decrypt(unb64u(doc["iv"]), unb64u(doc["ciphertext"]) + unb64u(doc["tag"]),
                             doc["protected"].encode())  # fmt: skip
    assert pt == b"abc"


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv", "encrypted_key", "protected"])
def test_tampered_jwe_is_refused(member: str) -> None:
    k = TeeKeyPair.generate()
    doc = jwe.encrypt(b"payload-bytes", k.pubkey)
    raw = bytearray(unb64u(doc[member]))
    raw[len(raw) // 2] ^= 0x01
    bad = dict(doc, **{member: b64u(bytes(raw))})
    with pytest.raises(JweError):
        k.decrypt(bad)


def test_wrong_key_and_malformed_jwe() -> None:
    k, other = TeeKeyPair.generate(), TeeKeyPair.generate()
    doc = jwe.encrypt(b"x", k.pubkey)
    with pytest.raises(JweError):
        other.decrypt(doc)
    with pytest.raises(JweError):
        TeeKeyPair.generate("RSA-OAEP-256").decrypt(doc)
    for bad in ({}, {"protected": "e30"}, dict(doc, tag=None), "not json", dict(doc, iv=doc["iv"] + "=")):
        with pytest.raises(JweError):
            k.decrypt(bad)
    hdr = json.loads(unb64u(doc["protected"]))
    hdr["enc"] = "A128GCM"
    with pytest.raises(JweError):
        k.decrypt(dict(doc, protected=b64u(json.dumps(hdr).encode())))


def test_unsupported_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(TeeKeyError):
        TeeKeyPair(p384, "ECDH-ES+A256KW")
    n = p384.public_key().public_numbers()
    pk = jwe.TeePubKey.from_json({"kty": "EC", "crv": "P-384", "alg": "ECDH-ES+A256KW",
                                  "x": b64u(n.x.to_bytes(48, "big")), "y": b64u(n.y.to_bytes(48, "big"))})  # fmt: skip
    with pytest.raises(JweError):
        jwe.encrypt(b"x", pk)
    with pytest.raises(TeeKeyError):
        TeeKeyPair.generate("A128KW")
    with pytest.raises(TeeKeyError):
        jwe.TeePubKey.from_json({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})  # no alg
    with pytest.raises(TeeKeyError):
        TeeKeyPair.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_tee_pubkey_parse_drops_extra_members() -> None:
    k = TeeKeyPair.generate()
    with_extra = dict(k.public_jwk(), kid="x", use="enc")
    assert jwe.TeePubKey.from_json(with_extra).to_jwk() == k.public_jwk()
