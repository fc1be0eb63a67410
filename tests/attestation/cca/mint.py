"""Mint CCA tokens for tests with trustee's published *test* keys
(tests/fixtures/evidence/cca/misc/{rak,cpak}-priv.json): the recorded
example token's platform token is reused verbatim (it attests that RAK), and
a fresh realm token with the wanted challenge / personalization value is
signed by the RAK, so a live handshake binds the session without relaxing
any check. ``resign_platform`` re-signs an edited platform token with the
test CPAK."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cbor2
from pycose.algorithms import Es384
from pycose.headers import Algorithm
from pycose.keys.curves import P384
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

CCA = Path(__file__).resolve().parents[2] / "fixtures" / "evidence" / "cca"
EXAMPLE = CCA / "misc" / "cca-example-token.cbor"
TA_STORE = CCA / "tastore.json"
RV_STORE = CCA / "rvstore.json"


def _u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _priv(name: str) -> EC2Key:
    j = json.loads((CCA / "misc" / name).read_text())
    return EC2Key(crv=P384, d=_u(j["d"]), x=_u(j["x"]), y=_u(j["y"]))


def parts() -> tuple[bytes, dict[int, Any], dict[int, Any]]:
    top = cbor2.loads(EXAMPLE.read_bytes())
    platform_raw = top.value[44234]
    realm = cbor2.loads(Sign1Message.decode(top.value[44241]).payload or b"")
    platform = cbor2.loads(Sign1Message.decode(platform_raw).payload or b"")
    return platform_raw, dict(platform), dict(realm)


def sign(claims: dict[int, Any], key_file: str) -> bytes:
    msg = Sign1Message(phdr={Algorithm: Es384}, payload=cbor2.dumps(claims))
    msg.key = _priv(key_file)
    out: bytes = msg.encode()
    return out


def collection(platform_raw: bytes, realm_raw: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(399, {44234: platform_raw, 44241: realm_raw}))


def mint(challenge: bytes, rpv: bytes = bytes(64)) -> bytes:
    platform_raw, _, realm = parts()
    realm[10] = challenge.ljust(64, b"\x00")
    realm[44235] = rpv.ljust(64, b"\x00")
    return collection(platform_raw, sign(realm, "rak-priv.json"))


def resign_platform(edit: dict[int, Any]) -> bytes:
    _, platform, _ = parts()
    platform.update(edit)
    top = cbor2.loads(EXAMPLE.read_bytes())
    return collection(sign(platform, "cpak-priv.json"), top.value[44241])
