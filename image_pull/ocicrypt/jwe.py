"""JWE key unwrapping as ocicrypt's ``jwe`` scheme emits it (go-jose JSON serialization).

``skopeo copy --encryption-key jwe:pub.pem`` stores, per layer, the annotation
``org.opencontainers.image.enc.keys.jwe`` = base64 of one JWE in JSON
serialization (flattened for one recipient, general with ``recipients`` for
several) whose plaintext is the layer's private options JSON. Key management:
RSA keys -> ``RSA-OAEP`` (SHA-1), EC keys -> ``ECDH-ES+A256KW``; content
encryption ``A256GCM`` with AAD = ASCII(protected header). We accept what
ocicrypt's unwrapper accepts: RSA-OAEP, RSA-OAEP-256, ECDH-ES(+A128/192/256KW)
and A128/192/256GCM, A128CBC-HS256/A192CBC-HS384/A256CBC-HS512.

Parsing is strict (duplicate keys, unknown ``crit``, ``zip`` and header
parameters defined twice are errors); a JWE is only ever decrypted, never trusted
further than the AEAD tag vouches for.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from coco_common.strict_json import strict_loads
from image_pull.ocicrypt.errors import InvalidEncryptedLayer, KeyUnavailable

__all__ = ["MAX_JWE_BYTES", "PrivateKey", "jwe_decrypt", "load_private_key"]

MAX_JWE_BYTES = 1 << 20

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _Recipient:
    header: dict[str, Any]
    encrypted_key: bytes = field(repr=False)


def _b64url(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise InvalidEncryptedLayer(f"JWE {what} is not a string")
    try:
        return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidEncryptedLayer(f"JWE {what} is not base64url") from exc


def _strict(untrusted: bytes, what: str) -> Any:
    try:
        return strict_loads(untrusted)
    except ValueError as exc:
        # no cause: the parser's error may quote the decrypted options (the layer key)
        raise InvalidEncryptedLayer(f"{what} is not valid strict JSON: {str(exc)[:80]}") from None


def load_private_key(pem_or_der: bytes) -> PrivateKey:
    """An RSA or EC private key from PEM (PKCS#8, PKCS#1, SEC1) or DER."""
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    for loader in loaders:
        try:
            key = loader(pem_or_der, password=None)
        except (ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            return key
        raise InvalidEncryptedLayer("decryption keys must be RSA or EC private keys")
    raise InvalidEncryptedLayer("a decryption key is not an unencrypted PEM/DER private key")


def _parse(
    untrusted_jwe: bytes,
) -> tuple[bytes, dict[str, Any], list[_Recipient], bytes, bytes, bytes, bytes]:
    if len(untrusted_jwe) > MAX_JWE_BYTES:
        raise InvalidEncryptedLayer("JWE too large")
    doc = _strict(untrusted_jwe, "JWE")
    if not isinstance(doc, dict):
        raise InvalidEncryptedLayer("JWE is not a JSON object")
    known = {
        "protected",
        "unprotected",
        "header",
        "encrypted_key",
        "recipients",
        "aad",
        "iv",
        "ciphertext",
        "tag",
    }
    if set(doc) - known:
        raise InvalidEncryptedLayer("JWE has unknown members")
    protected_b64 = doc.get("protected", "")
    if not isinstance(protected_b64, str):
        raise InvalidEncryptedLayer("JWE protected header is not a string")
    protected: dict[str, Any] = {}
    if protected_b64:
        p = _strict(_b64url(protected_b64, "protected header"), "JWE protected header")
        if not isinstance(p, dict):
            raise InvalidEncryptedLayer("JWE protected header is not an object")
        protected = p
    unprotected = doc.get("unprotected", {})
    if not isinstance(unprotected, dict):
        raise InvalidEncryptedLayer("JWE unprotected header is not an object")
    recipients: list[_Recipient] = []
    if "recipients" in doc:
        rs = doc["recipients"]
        if not isinstance(rs, list) or not rs or len(rs) > 64:
            raise InvalidEncryptedLayer("JWE recipients must be a non-empty list")
        for r in rs:
            if not isinstance(r, dict) or set(r) - {"header", "encrypted_key"}:
                raise InvalidEncryptedLayer("JWE recipient is malformed")
            h = r.get("header", {})
            if not isinstance(h, dict):
                raise InvalidEncryptedLayer("JWE recipient header is not an object")
            recipients.append(_Recipient(h, _b64url(r.get("encrypted_key", ""), "encrypted_key")))
    else:
        h = doc.get("header", {})
        if not isinstance(h, dict):
            raise InvalidEncryptedLayer("JWE header is not an object")
        recipients.append(_Recipient(h, _b64url(doc.get("encrypted_key", ""), "encrypted_key")))
    shared = dict(unprotected)
    for k in protected:
        if k in shared:
            raise InvalidEncryptedLayer(f"JWE header parameter {k[:20]!r} defined twice")
        shared[k] = protected[k]
    aad = protected_b64.encode("ascii")
    if "aad" in doc:
        if not isinstance(doc["aad"], str):
            raise InvalidEncryptedLayer("JWE aad is not a string")
        aad += b"." + doc["aad"].encode("ascii")
    return (
        aad,
        shared,
        recipients,
        _b64url(doc.get("iv"), "iv"),
        _b64url(doc.get("ciphertext"), "ciphertext"),
        _b64url(doc.get("tag"), "tag"),
        protected_b64.encode(),
    )


def _concat_kdf(z: bytes, alg_id: str, keylen: int, apu: bytes, apv: bytes) -> bytes:
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    other = lp(alg_id.encode()) + lp(apu) + lp(apv) + (keylen * 8).to_bytes(4, "big")
    return ConcatKDFHash(hashes.SHA256(), keylen, other).derive(z)


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_KW_LEN = {"ECDH-ES+A128KW": 16, "ECDH-ES+A192KW": 24, "ECDH-ES+A256KW": 32}
_ENC_LEN = {
    "A128GCM": 16,
    "A192GCM": 24,
    "A256GCM": 32,
    "A128CBC-HS256": 32,
    "A192CBC-HS384": 48,
    "A256CBC-HS512": 64,
}


def _epk(header: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePublicKey:
    epk = header.get("epk")
    if not isinstance(epk, dict) or epk.get("kty") != "EC":
        raise InvalidEncryptedLayer("JWE ECDH-ES recipient lacks an EC epk")
    curve = _CURVES.get(str(epk.get("crv")))
    if curve is None or not isinstance(key.curve, curve):
        raise KeyUnavailable("JWE ephemeral key is on another curve")
    x = int.from_bytes(_b64url(epk.get("x"), "epk.x"), "big")
    y = int.from_bytes(_b64url(epk.get("y"), "epk.y"), "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    except ValueError as exc:
        raise InvalidEncryptedLayer("JWE ephemeral key is not a point on its curve") from exc


def _unwrap_cek(key: PrivateKey, header: dict[str, Any], encrypted_key: bytes, enc: str) -> bytes:
    alg = header.get("alg")
    if alg in ("RSA-OAEP", "RSA-OAEP-256"):
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyUnavailable("key type does not fit the recipient")
        h: hashes.HashAlgorithm = hashes.SHA1() if alg == "RSA-OAEP" else hashes.SHA256()  # noqa: S303
        try:
            return key.decrypt(encrypted_key, _oaep(h))
        except ValueError as exc:
            raise KeyUnavailable("RSA-OAEP unwrap failed (another key)") from exc
    if isinstance(alg, str) and (alg == "ECDH-ES" or alg in _KW_LEN):
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyUnavailable("key type does not fit the recipient")
        z = key.exchange(ec.ECDH(), _epk(header, key))
        apu = _b64url(header["apu"], "apu") if "apu" in header else b""
        apv = _b64url(header["apv"], "apv") if "apv" in header else b""
        if alg == "ECDH-ES":
            if encrypted_key:
                raise InvalidEncryptedLayer("JWE ECDH-ES direct agreement carries an encrypted_key")
            return _concat_kdf(z, enc, _ENC_LEN[enc], apu, apv)
        kek = _concat_kdf(z, alg, _KW_LEN[alg], apu, apv)
        try:
            return aes_key_unwrap(kek, encrypted_key)
        except (InvalidUnwrap, ValueError) as exc:
            raise KeyUnavailable("ECDH-ES key unwrap failed (another key)") from exc
    raise InvalidEncryptedLayer(f"unsupported JWE key management algorithm {str(alg)[:30]!r}")


def _oaep(h: hashes.HashAlgorithm) -> Any:
    from cryptography.hazmat.primitives.asymmetric import padding as apad

    return apad.OAEP(mgf=apad.MGF1(algorithm=h), algorithm=h, label=None)


def _content_decrypt(enc: str, cek: bytes, iv: bytes, ct: bytes, tag: bytes, aad: bytes) -> bytes:
    if len(cek) != _ENC_LEN[enc]:
        raise KeyUnavailable("JWE content key has the wrong length")
    if enc.endswith("GCM"):
        try:
            return AESGCM(cek).decrypt(iv, ct + tag, aad)
        except (InvalidTag, ValueError) as exc:
            raise KeyUnavailable("JWE content decryption failed (wrong key or tampered)") from exc
    half = len(cek) // 2
    mac_key, enc_key = cek[:half], cek[half:]
    hname = {32: "sha256", 48: "sha384", 64: "sha512"}[len(cek)]
    al = (len(aad) * 8).to_bytes(8, "big")
    want = hmac.new(mac_key, aad + iv + ct + al, hname).digest()[:half]
    if not hmac.compare_digest(want, tag):
        raise KeyUnavailable("JWE content authentication failed (wrong key or tampered)")
    if len(iv) != 16:
        raise InvalidEncryptedLayer("JWE CBC iv must be 16 bytes")
    d = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
    padded = d.update(ct) + d.finalize()
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(padded) + u.finalize()
    except ValueError as exc:
        raise KeyUnavailable("JWE content padding is invalid") from exc


def jwe_decrypt(untrusted_jwe: bytes, keys: Sequence[PrivateKey]) -> bytes:
    """Decrypt a JWE (JSON serialization) with the first key that fits one recipient.

    Raises :class:`KeyUnavailable` when no key fits, :class:`InvalidEncryptedLayer`
    when the JWE is malformed or uses unsupported algorithms.
    """
    aad, shared, recipients, iv, ct, tag, _ = _parse(untrusted_jwe)
    if "zip" in shared or "crit" in shared:
        raise InvalidEncryptedLayer("JWE uses zip or crit, which ocicrypt layers never use")
    for r in recipients:
        header = dict(shared)
        for k, v in r.header.items():
            if k in header:
                raise InvalidEncryptedLayer(f"JWE header parameter {k[:20]!r} defined twice")
            header[k] = v
        if "zip" in header or "crit" in header:
            raise InvalidEncryptedLayer("JWE uses zip or crit, which ocicrypt layers never use")
        enc = header.get("enc")
        if not isinstance(enc, str) or enc not in _ENC_LEN:
            raise InvalidEncryptedLayer(f"unsupported JWE content encryption {str(enc)[:30]!r}")
        for key in keys:
            try:
                cek = _unwrap_cek(key, header, r.encrypted_key, enc)
                return _content_decrypt(enc, cek, iv, ct, tag, aad)
            except KeyUnavailable:
                continue
    raise KeyUnavailable("no decryption key fits any JWE recipient")
