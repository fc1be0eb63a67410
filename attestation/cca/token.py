"""The Arm CCA attestation token (Arm "Realm Management Monitor" spec,
draft-ffm-rats-cca-token): a CBOR tag 399 collection with two COSE_Sign1
messages, the *platform* token under key 44234 (signed by the platform's CPAK)
and the *realm* token under 44241 (signed by the realm attestation key, RAK,
whose public key the realm token carries).

Decoding uses cbor2 and pycose; this module only checks the structure and
types of the claims it returns. :func:`attestation.cca.verify.verify_token`
then checks both signatures and the binding ``platform challenge == H(RAK public key)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from pycose.messages.sign1message import Sign1Message

from attestation.cca.errors import CcaFormatError

__all__ = [
    "MAX_TOKEN_SIZE",
    "CcaToken",
    "PlatformClaims",
    "RealmClaims",
    "parse_token",
]

MAX_TOKEN_SIZE = 64 * 1024

_COLLECTION_TAG = 399
_PLATFORM = 44234
_REALM = 44241

# realm claim keys
_CHALLENGE = 10
_PROFILE = 265
_R_PERSO = 44235
_R_HASH_ALG = 44236
_R_PUBKEY = 44237
_R_RIM = 44238
_R_REM = 44239
_R_PUBKEY_HASH_ALG = 44240
# platform claim keys
_P_INSTANCE_ID = 256
_P_LIFECYCLE = 2395
_P_IMPLEMENTATION_ID = 2396
_P_SW_COMPONENTS = 2399
_P_SERVICE = 2400
_P_CONFIG = 2401
_P_HASH_ALG = 2402


def _bytes(claims: Mapping[Any, Any], key: int, what: str, sizes: Sequence[int] | None = None) -> bytes:
    v = claims.get(key)
    if not isinstance(v, bytes):
        raise CcaFormatError(f"CCA {what} claim ({key}) missing or not a byte string")
    if sizes is not None and len(v) not in sizes:
        raise CcaFormatError(f"CCA {what} claim has {len(v)} bytes")
    return v


def _text(claims: Mapping[Any, Any], key: int, what: str, *, required: bool = True) -> str | None:
    v = claims.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or len(v) > 1024:
        raise CcaFormatError(f"CCA {what} claim ({key}) missing or not text")
    return v


@dataclass(frozen=True)
class RealmClaims:
    challenge: bytes
    personalization_value: bytes
    initial_measurement: bytes
    extensible_measurements: tuple[bytes, bytes, bytes, bytes]
    hash_algo_id: str
    public_key: bytes
    public_key_hash_algo_id: str
    profile: str | None


@dataclass(frozen=True)
class PlatformClaims:
    challenge: bytes
    instance_id: bytes
    implementation_id: bytes
    lifecycle: int
    config: bytes
    hash_algo_id: str
    profile: str | None
    service_indicator: str | None
    sw_components: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class CcaToken:
    platform_message: Sign1Message
    realm_message: Sign1Message
    platform: PlatformClaims
    realm: RealmClaims


def _sign1(raw: Any, what: str) -> tuple[Sign1Message, Mapping[Any, Any]]:
    if not isinstance(raw, bytes):
        raise CcaFormatError(f"CCA {what} token is not a byte string")
    try:
        msg = Sign1Message.decode(raw)
        claims = cbor2.loads(msg.payload or b"")
    except Exception as exc:
        raise CcaFormatError(f"CCA {what} token is not a COSE_Sign1 message ({type(exc).__name__})") from exc
    if not isinstance(claims, Mapping):
        raise CcaFormatError(f"CCA {what} token payload is not a claims map")
    return msg, claims


def _sw_components(v: Any) -> tuple[Mapping[str, Any], ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > 64:
        raise CcaFormatError("CCA platform sw-components is not a list")
    names = {
        1: "measurement-type",
        2: "measurement-value",
        4: "version",
        5: "signer-id",
        6: "measurement-description",
    }
    out = []
    for c in v:
        if not isinstance(c, Mapping):
            raise CcaFormatError("CCA sw-component is not a map")
        item: dict[str, Any] = {}
        for k, name in names.items():
            if k in c:
                val = c[k]
                if not isinstance(val, (bytes, str)):
                    raise CcaFormatError(f"CCA sw-component {name} has the wrong type")
                item[name] = val
        if not isinstance(item.get("measurement-value"), bytes):
            raise CcaFormatError("CCA sw-component without a measurement-value")
        out.append(item)
    return tuple(out)


def parse_token(untrusted: bytes) -> CcaToken:
    if len(untrusted) > MAX_TOKEN_SIZE:
        raise CcaFormatError(f"CCA token larger than {MAX_TOKEN_SIZE} bytes")
    try:
        top = cbor2.loads(untrusted)
    except Exception as exc:
        raise CcaFormatError(f"CCA token is not CBOR ({type(exc).__name__})") from exc
    if not isinstance(top, cbor2.CBORTag) or top.tag != _COLLECTION_TAG or not isinstance(top.value, Mapping):
        raise CcaFormatError("CCA token is not a tag-399 collection")
    if set(top.value) != {_PLATFORM, _REALM}:
        raise CcaFormatError("CCA token collection must hold exactly a platform and a realm token")
    pmsg, pc = _sign1(top.value[_PLATFORM], "platform")
    rmsg, rc = _sign1(top.value[_REALM], "realm")
    rem = rc.get(_R_REM)
    if not isinstance(rem, list) or len(rem) != 4 or not all(isinstance(x, bytes) for x in rem):
        raise CcaFormatError("CCA realm extensible measurements must be four byte strings")
    lifecycle = pc.get(_P_LIFECYCLE)
    if type(lifecycle) is not int:
        raise CcaFormatError("CCA platform lifecycle is not an integer")
    realm = RealmClaims(
        challenge=_bytes(rc, _CHALLENGE, "realm challenge", (64,)),
        personalization_value=_bytes(rc, _R_PERSO, "realm personalization value", (64,)),
        initial_measurement=_bytes(rc, _R_RIM, "realm initial measurement", (32, 48, 64)),
        extensible_measurements=(rem[0], rem[1], rem[2], rem[3]),
        hash_algo_id=str(_text(rc, _R_HASH_ALG, "realm hash algorithm")),
        public_key=_bytes(rc, _R_PUBKEY, "realm public key"),
        public_key_hash_algo_id=str(_text(rc, _R_PUBKEY_HASH_ALG, "realm public key hash algorithm")),
        profile=_text(rc, _PROFILE, "realm profile", required=False),
    )
    platform = PlatformClaims(
        challenge=_bytes(pc, _CHALLENGE, "platform challenge", (32, 48, 64)),
        instance_id=_bytes(pc, _P_INSTANCE_ID, "platform instance id", (33,)),
        implementation_id=_bytes(pc, _P_IMPLEMENTATION_ID, "platform implementation id", (32,)),
        lifecycle=lifecycle,
        config=_bytes(pc, _P_CONFIG, "platform config"),
        hash_algo_id=str(_text(pc, _P_HASH_ALG, "platform hash algorithm")),
        profile=_text(pc, _PROFILE, "platform profile", required=False),
        service_indicator=_text(pc, _P_SERVICE, "platform verification service", required=False),
        sw_components=_sw_components(pc.get(_P_SW_COMPONENTS)),
    )
    return CcaToken(pmsg, rmsg, platform, realm)
