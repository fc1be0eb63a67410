"""CCA endorsements: the trust-anchor store (trustee's ``tastore.json``: a list
of ``{"pkey": <EC JWK>, "implementation-id": hex, "instance-id": hex}``)
naming each platform's CPAK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from coco_common.b64 import b64url_decode

__all__ = ["TrustAnchor", "jwk_public_key", "load_trust_anchors"]


class TrustAnchor:
    """A platform's CPAK and the implementation/instance IDs it is for."""

    def __init__(self, key: ec.EllipticCurvePublicKey, implementation_id: bytes, instance_id: bytes) -> None:
        self.key = key
        self.implementation_id = implementation_id
        self.instance_id = instance_id


def _b64url(s: Any) -> int:
    if not isinstance(s, str):
        raise ValueError("JWK coordinate must be a string")
    return int.from_bytes(b64url_decode(s), "big")


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    curves: dict[str, ec.EllipticCurve] = {
        "P-256": ec.SECP256R1(),
        "P-384": ec.SECP384R1(),
        "P-521": ec.SECP521R1(),
    }
    if jwk.get("kty") != "EC" or jwk.get("crv") not in curves:
        raise ValueError("CPAK must be an EC JWK on P-256/P-384/P-521")
    return ec.EllipticCurvePublicNumbers(
        _b64url(jwk["x"]), _b64url(jwk["y"]), curves[jwk["crv"]]
    ).public_key()


def load_trust_anchors(doc: Any) -> list[TrustAnchor]:
    if not isinstance(doc, list):
        raise ValueError("CCA trust-anchor store must be a JSON list")
    out = []
    for e in doc:
        if not isinstance(e, Mapping) or not isinstance(e.get("pkey"), Mapping):
            raise ValueError("CCA trust anchor needs a pkey JWK")
        out.append(
            TrustAnchor(
                jwk_public_key(e["pkey"]),
                bytes.fromhex(str(e.get("implementation-id", ""))),
                bytes.fromhex(str(e.get("instance-id", ""))),
            )
        )
    return out
