"""JWE as the KBS emits it (reference §5.4): flattened JSON, enc A256GCM,
AAD = ASCII of the ``protected`` member, and key management chosen from the
TEE public key: ECDH-ES+A256KW (P-256 / P-521), RSA-OAEP-256 or RSA1_5.

:func:`encrypt` is the server side and writes the protected header exactly
as trustee does (compact, members in the order ``alg``, ``enc``, ``epk`` with
``crv``, ``kty``, ``x``, ``y``) because the Rust client rebuilds the AAD from
the re-serialized header. :func:`decrypt` is the client side and uses the
received ``protected`` string as AAD, as RFC 7516 says.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from coco_common.b64 import b64url_decode, b64url_encode
from coco_common.strict_json import strict_loads, strict_object

from .errors import JweError, TeeKeyError
from .jws import public_key_to_jwk

__all__ = [
    "ALG_ECDH_ES_A256KW",
    "ALG_RSA1_5",
    "ALG_RSA_OAEP_256",
    "MAX_JWE_BYTES",
    "TeePubKey",
    "decrypt",
    "encrypt",
]

ALG_ECDH_ES_A256KW = "ECDH-ES+A256KW"
ALG_RSA_OAEP_256 = "RSA-OAEP-256"
ALG_RSA1_5 = "RSA1_5"
ENC_A256GCM = "A256GCM"
#: largest JWE document (JSON text) this module accepts
MAX_JWE_BYTES = 64 * 1024 * 1024

_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-521": (ec.SECP521R1(), 66),
}
_JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")


@dataclass(frozen=True)
class TeePubKey:
    """The ``tee-pubkey`` JWK, reduced to the members kbs-types knows.

    Parsing keeps only ``kty``, ``alg`` and the key members (``crv``, ``x``,
    ``y`` or ``n``, ``e``), like trustee; :meth:`to_jwk` rebuilds the object
    that is hashed into the runtime data."""

    kty: str
    alg: str
    crv: str | None = None
    x: str | None = None
    y: str | None = None
    n: str | None = None
    e: str | None = None

    @classmethod
    def from_json(cls, untrusted: Any) -> TeePubKey:
        if not isinstance(untrusted, Mapping):
            raise TeeKeyError("tee-pubkey must be a JSON object")
        kty = untrusted.get("kty")
        alg = untrusted.get("alg")
        if not isinstance(alg, str):
            raise TeeKeyError("tee-pubkey needs a string 'alg'")
        if kty == "EC":
            fields = {k: untrusted.get(k) for k in ("crv", "x", "y")}
            if not all(isinstance(v, str) for v in fields.values()):
                raise TeeKeyError("EC tee-pubkey needs string crv, x and y")
            return cls(kty="EC", alg=alg, crv=fields["crv"], x=fields["x"], y=fields["y"])
        if kty == "RSA":
            n, e = untrusted.get("n"), untrusted.get("e")
            if not isinstance(n, str) or not isinstance(e, str):
                raise TeeKeyError("RSA tee-pubkey needs string n and e")
            return cls(kty="RSA", alg=alg, n=n, e=e)
        raise TeeKeyError("tee-pubkey kty must be EC or RSA")

    def to_jwk(self) -> dict[str, str]:
        """The JWK with only the known members, in kbs-types' order."""
        if self.kty == "EC":
            assert self.crv is not None and self.x is not None and self.y is not None
            return {"kty": "EC", "crv": self.crv, "alg": self.alg, "x": self.x, "y": self.y}
        assert self.n is not None and self.e is not None
        return {"kty": "RSA", "alg": self.alg, "n": self.n, "e": self.e}

    def ec_public_key(self) -> ec.EllipticCurvePublicKey:
        if self.kty != "EC" or self.crv not in _CURVES:
            raise JweError(f"unsupported EC curve {self.crv!r} (P-256 and P-521 only)")
        assert self.x is not None and self.y is not None
        return _ec_public_key(self.crv, self.x, self.y)

    def rsa_public_key(self) -> rsa.RSAPublicKey:
        if self.kty != "RSA":
            raise JweError("not an RSA key")
        assert self.n is not None and self.e is not None
        try:
            n = int.from_bytes(b64url_decode(self.n, allow_padding=False), "big")
            e = int.from_bytes(b64url_decode(self.e, allow_padding=False), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise JweError("tee-pubkey n/e do not form an RSA key") from exc
        if key.key_size < 2048:
            raise JweError("RSA tee-pubkey shorter than 2048 bits")
        return key


@functools.lru_cache(maxsize=1024)
def _ec_public_key(crv: str, x_b64: str, y_b64: str) -> ec.EllipticCurvePublicKey:
    """The checked public key of a JWK's members. Remembered (keys are immutable): one TEE key
    serves a client's /attest check and each resource it fetches. Failures are not cached."""
    curve, size = _CURVES[crv]
    try:
        x, y = b64url_decode(x_b64, allow_padding=False), b64url_decode(y_b64, allow_padding=False)
    except ValueError as exc:
        raise JweError("tee-pubkey x/y are not base64url") from exc
    if len(x) != size or len(y) != size:
        raise JweError(f"tee-pubkey x/y must be {size} bytes for {crv}")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError as exc:
        raise JweError("tee-pubkey is not a point on its curve") from exc


def _concat_kdf(z: bytes, alg: str) -> bytes:
    """RFC 7518 §4.6 Concat KDF, SHA-256, one round, empty apu/apv, 256 bits."""
    alg_b = alg.encode("ascii")
    other = len(alg_b).to_bytes(4, "big") + alg_b + b"\0\0\0\0" + b"\0\0\0\0" + (256).to_bytes(4, "big")
    return hashlib.sha256(b"\0\0\0\1" + z + other).digest()


def _header_json(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()


def encrypt(plaintext: bytes, key: TeePubKey) -> dict[str, str]:
    """Encrypt ``plaintext`` to the TEE key as trustee's KBS does."""
    cek = AESGCM.generate_key(bit_length=256)
    header: dict[str, Any]
    if key.alg == ALG_ECDH_ES_A256KW and key.kty == "EC":
        peer = key.ec_public_key()
        eph = ec.generate_private_key(peer.curve)
        jwk = public_key_to_jwk(eph.public_key())
        # in the order kbs-types serialises its epk: guests recompute the AAD from it
        epk = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
        kek = _concat_kdf(eph.exchange(ec.ECDH(), peer), ALG_ECDH_ES_A256KW)
        encrypted_key = aes_key_wrap(kek, cek)
        header = {"alg": ALG_ECDH_ES_A256KW, "enc": ENC_A256GCM, "epk": epk}
    elif key.alg == ALG_RSA_OAEP_256 and key.kty == "RSA":
        encrypted_key = key.rsa_public_key().encrypt(
            cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        )
        header = {"alg": ALG_RSA_OAEP_256, "enc": ENC_A256GCM}
    elif key.alg == ALG_RSA1_5 and key.kty == "RSA":
        encrypted_key = key.rsa_public_key().encrypt(cek, padding.PKCS1v15())
        header = {"alg": ALG_RSA1_5, "enc": ENC_A256GCM}
    else:
        raise JweError(f"unsupported tee-pubkey algorithm {key.kty}/{key.alg}")
    protected = b64url_encode(_header_json(header))
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-16]),
        "tag": b64url_encode(sealed[-16:]),
    }


def _parse_jwe(untrusted_jwe: Any) -> tuple[dict[str, Any], str, dict[str, bytes], bytes]:
    if isinstance(untrusted_jwe, bytes | str):
        untrusted_jwe = strict_object(untrusted_jwe, limit=MAX_JWE_BYTES, error=JweError, what="JWE")
    if not isinstance(untrusted_jwe, Mapping):
        raise JweError("JWE must be a JSON object")
    parts: dict[str, bytes] = {}
    for name in _JWE_MEMBERS:
        val = untrusted_jwe.get(name)
        if not isinstance(val, str):
            raise JweError(f"JWE member {name!r} missing or not a string")
        if name != "protected":
            try:
                parts[name] = b64url_decode(val, allow_padding=False)
            except ValueError as exc:
                raise JweError(f"JWE member {name!r} is not base64url") from exc
    protected = untrusted_jwe["protected"]
    try:
        header = strict_loads(b64url_decode(protected, allow_padding=False))
    except ValueError as exc:
        raise JweError("JWE protected header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise JweError("JWE protected header is not an object")
    aad = protected.encode("ascii")
    extra = untrusted_jwe.get("aad")
    if extra is not None:
        if not isinstance(extra, str) or not extra.isascii():
            raise JweError("JWE aad must be an ASCII string")
        aad += b"." + extra.encode("ascii")
    if header.get("enc") != ENC_A256GCM:
        raise JweError("JWE enc must be A256GCM")
    if len(parts["iv"]) != 12 or len(parts["tag"]) != 16:
        raise JweError("JWE iv must be 12 bytes and tag 16 bytes")
    return header, protected, parts, aad


def decrypt(untrusted_jwe: Any, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """Decrypt a KBS JWE (a dict, or its JSON text) with the TEE private key."""
    header, _protected, parts, aad = _parse_jwe(untrusted_jwe)
    alg = header.get("alg")
    try:
        if alg == ALG_ECDH_ES_A256KW:
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                raise JweError("JWE uses ECDH-ES but the TEE key is RSA")
            untrusted_epk = header.get("epk")
            if not isinstance(untrusted_epk, Mapping):
                raise JweError("JWE epk missing or not an object")
            epk = TeePubKey.from_json({**untrusted_epk, "alg": ALG_ECDH_ES_A256KW})
            peer = epk.ec_public_key()
            if peer.curve.name != private_key.curve.name:
                raise JweError("JWE epk curve differs from the TEE key curve")
            kek = _concat_kdf(private_key.exchange(ec.ECDH(), peer), ALG_ECDH_ES_A256KW)
            cek = aes_key_unwrap(kek, parts["encrypted_key"])
        elif alg in (ALG_RSA_OAEP_256, ALG_RSA1_5):
            if not isinstance(private_key, rsa.RSAPrivateKey):
                raise JweError("JWE uses RSA but the TEE key is EC")
            pad: padding.AsymmetricPadding = (
                padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
                if alg == ALG_RSA_OAEP_256
                else padding.PKCS1v15()
            )
            cek = private_key.decrypt(parts["encrypted_key"], pad)
        else:
            raise JweError(f"unsupported JWE alg {alg!r}")
        if len(cek) != 32:
            raise JweError("content key is not 256 bits")
        return AESGCM(cek).decrypt(parts["iv"], parts["ciphertext"] + parts["tag"], aad)
    except (InvalidTag, InvalidUnwrap) as exc:
        raise JweError("JWE authentication failed (wrong key or tampered)") from exc
    except TeeKeyError as exc:
        raise JweError(f"JWE epk invalid: {exc}") from exc
    except ValueError as exc:
        raise JweError("JWE decryption failed") from exc
