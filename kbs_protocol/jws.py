"""Compact JWS (JWT) signing and verification for the algorithms the KBS
ecosystem uses: ES256/ES384/ES512 (EAR tokens), EdDSA (admin tokens), and
RS256/RS384/RS512/PS256 (other identity providers)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from coco_common.b64 import b64url_decode, b64url_encode
from coco_common.strict_json import strict_loads

from .errors import TokenError

__all__ = [
    "MAX_TOKEN_BYTES",
    "PrivateSigningKey",
    "PublicVerifyKey",
    "decode_unverified",
    "jwk_to_public_key",
    "public_key_to_jwk",
    "sign",
    "verify",
]

#: largest token accepted anywhere (trustee's header limit is 128 KiB)
MAX_TOKEN_BYTES = 256 * 1024

PrivateSigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicVerifyKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

_EC: dict[str, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm, int]] = {
    "ES256": (ec.SECP256R1, hashes.SHA256(), 32),
    "ES384": (ec.SECP384R1, hashes.SHA384(), 48),
    "ES512": (ec.SECP521R1, hashes.SHA512(), 66),
}
_RSA: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512(),
    "PS256": hashes.SHA256(), "PS384": hashes.SHA384(), "PS512": hashes.SHA512(),
}  # fmt: skip
_CRV = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}
_CRV_BY_NAME: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sign(
    claims: Mapping[str, Any], key: PrivateSigningKey, *, alg: str, header: Mapping[str, Any] | None = None
) -> str:
    """Sign ``claims`` as a compact JWT with header ``{"alg", "typ":"JWT", **header}``."""
    hdr = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = b64url_encode(_json(hdr)) + "." + b64url_encode(_json(dict(claims)))
    data = signing_input.encode("ascii")
    if alg in _EC:
        curve, h, size = _EC[alg]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, curve):
            raise TokenError(f"{alg} needs an EC key on the matching curve")
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise TokenError("EdDSA needs an Ed25519 key")
        sig = key.sign(data)
    elif alg in _RSA:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TokenError(f"{alg} needs an RSA key")
        pad = _rsa_padding(alg)
        sig = key.sign(data, pad, _RSA[alg])
    else:
        raise TokenError(f"unsupported JWS algorithm {alg!r}")
    return signing_input + "." + b64url_encode(sig)


def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg.startswith("PS"):
        return padding.PSS(mgf=padding.MGF1(_RSA[alg]), salt_length=padding.PSS.DIGEST_LENGTH)
    return padding.PKCS1v15()


def _split(untrusted_token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    if not isinstance(untrusted_token, str) or len(untrusted_token) > MAX_TOKEN_BYTES:
        raise TokenError("token missing or too large")
    parts = untrusted_token.strip().split(".")
    if len(parts) != 3:
        raise TokenError("token is not a compact JWS")
    try:
        header = strict_loads(b64url_decode(parts[0], allow_padding=False))
        claims = strict_loads(b64url_decode(parts[1], allow_padding=False))
        sig = b64url_decode(parts[2], allow_padding=False)
    except ValueError as exc:
        raise TokenError("token is not valid base64url JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("token header and claims must be JSON objects")
    return header, claims, sig, (parts[0] + "." + parts[1]).encode("ascii")


def decode_unverified(untrusted_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims WITHOUT checking the signature (client-side expiry only)."""
    header, claims, _, _ = _split(untrusted_token)
    return header, claims


def verify(
    untrusted_token: str, key: PublicVerifyKey, *, algorithms: Collection[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the signature with ``key``; returns (header, claims). Time claims are the caller's job."""
    header, claims, sig, data = _split(untrusted_token)
    alg = header.get("alg")
    if not isinstance(alg, str) or (algorithms is not None and alg not in algorithms):
        raise TokenError("token algorithm not allowed")
    try:
        if alg in _EC:
            curve, h, size = _EC[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
                raise TokenError("token algorithm does not match the key")
            if len(sig) != 2 * size:
                raise TokenError("bad ECDSA signature length")
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            key.verify(der, data, ec.ECDSA(h))
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise TokenError("token algorithm does not match the key")
            key.verify(sig, data)
        elif alg in _RSA:
            if not isinstance(key, rsa.RSAPublicKey):
                raise TokenError("token algorithm does not match the key")
            key.verify(sig, data, _rsa_padding(alg), _RSA[alg])
        else:
            raise TokenError(f"unsupported token algorithm {alg!r}")
    except InvalidSignature as exc:
        raise TokenError("token signature does not verify") from exc
    return header, claims


def public_key_to_jwk(key: PublicVerifyKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv, size = _CRV[key.curve.name]
        n = key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": b64url_encode(n.x.to_bytes(size, "big")),
                "y": b64url_encode(n.y.to_bytes(size, "big"))}  # fmt: skip
    if isinstance(key, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives import serialization

        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    rn = key.public_numbers()
    return {"kty": "RSA", "n": b64url_encode(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(rn.e.to_bytes((rn.e.bit_length() + 7) // 8, "big"))}  # fmt: skip


def jwk_to_public_key(untrusted_jwk: Any) -> PublicVerifyKey:
    if not isinstance(untrusted_jwk, Mapping):
        raise TokenError("JWK must be an object")
    kty = untrusted_jwk.get("kty")
    try:
        if kty == "EC":
            crv = _CRV_BY_NAME.get(str(untrusted_jwk.get("crv")))
            if crv is None:
                raise TokenError("unsupported JWK curve")
            x = int.from_bytes(b64url_decode(untrusted_jwk.get("x", ""), allow_padding=False), "big")
            y = int.from_bytes(b64url_decode(untrusted_jwk.get("y", ""), allow_padding=False), "big")
            return ec.EllipticCurvePublicNumbers(x, y, crv).public_key()
        if kty == "OKP" and untrusted_jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(
                b64url_decode(untrusted_jwk.get("x", ""), allow_padding=False)
            )
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(untrusted_jwk.get("n", ""), allow_padding=False), "big")
            e = int.from_bytes(b64url_decode(untrusted_jwk.get("e", ""), allow_padding=False), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise TokenError("JWK key members are invalid") from exc
    raise TokenError("unsupported JWK key type")
