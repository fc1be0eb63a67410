"""Authenticity of an Arm CCA attestation token: the platform token is signed
by the platform's CPAK (from the trust-anchor store,
:mod:`attestation.cca.endorsements`), the realm token by its RAK, and the
platform challenge is the hash of the RAK."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric import ec
from pycose.keys.curves import P256, P384, P521
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from attestation.cca.errors import CcaFormatError, CcaVerificationError
from attestation.cca.token import CcaToken

__all__ = ["cose_key", "verify_token"]

_HASHES = {"sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}
_CURVES = {48: (P384, ec.SECP384R1), 32: (P256, ec.SECP256R1), 66: (P521, ec.SECP521R1)}


def cose_key(key: ec.EllipticCurvePublicKey) -> EC2Key:
    nums = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {384: P384, 256: P256, 521: P521}.get(key.curve.key_size)
    if crv is None:
        raise CcaVerificationError("unsupported curve for a CCA key")
    return EC2Key(crv=crv, x=nums.x.to_bytes(size, "big"), y=nums.y.to_bytes(size, "big"))


def _rak(raw: bytes) -> EC2Key:
    """The RAK from the realm token: an uncompressed EC point (0x04 || x || y)."""
    if len(raw) < 65 or raw[0] != 0x04 or (len(raw) - 1) % 2:
        raise CcaFormatError("CCA realm public key is not an uncompressed EC point")
    size = (len(raw) - 1) // 2
    if size not in _CURVES:
        raise CcaFormatError("CCA realm public key has an unsupported size")
    crv, curve = _CURVES[size]
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(curve(), raw)
    except ValueError as exc:
        raise CcaFormatError("CCA realm public key is not a point on its curve") from exc
    return EC2Key(crv=crv, x=raw[1 : 1 + size], y=raw[1 + size :])


def _check(msg: Sign1Message, key: EC2Key, what: str) -> None:
    msg.key = key
    try:
        ok = msg.verify_signature()
    except Exception as exc:
        raise CcaVerificationError(
            f"CCA {what} token signature cannot be checked ({type(exc).__name__})"
        ) from exc
    if not ok:
        raise CcaVerificationError(f"CCA {what} token signature does not verify")


def verify_token(token: CcaToken, cpak: ec.EllipticCurvePublicKey) -> None:
    """Platform token signed by ``cpak``; realm token signed by its RAK; the
    platform challenge is the hash of the RAK (realm public-key hash algorithm)."""
    _check(token.platform_message, cose_key(cpak), "platform")
    _check(token.realm_message, _rak(token.realm.public_key), "realm")
    h = _HASHES.get(token.realm.public_key_hash_algo_id)
    if h is None:
        raise CcaVerificationError(f"unsupported RAK hash algorithm {token.realm.public_key_hash_algo_id!r}")
    if not hmac.compare_digest(h(token.realm.public_key).digest(), token.platform.challenge):
        raise CcaVerificationError("the platform token does not attest this realm's RAK (platform challenge)")
