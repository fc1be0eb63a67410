"""``cca``: trustee's example CCA token (CBOR/COSE), tokens minted with
trustee's test RAK/CPAK for binding cases, byte flips, the configfs-tsm
attester and ``coco-verify cca``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest

from attestation.cca.attester import CcaAttester
from attestation.cca.errors import CcaDeviceUnavailable, CcaFormatError, CcaVerificationError
from attestation.cca.kbs import CcaVerifier
from attestation.cca.token import parse_token
from attestation.errors import EvidenceFormatError
from attestation.snp.device import OsConfigfs
from attestation.verifier import EvidenceVerifier
from attestation.verify_cli import main

from .mint import EXAMPLE, RV_STORE, TA_STORE, mint, parts, resign_platform

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLE_CHALLENGE = bytes.fromhex(
    "57e979ae2618de0c1ab73144c440d741cf9236dc9d52ed190053382a4d190252"
    "f9f0370403c35dcb155fb4362d73c66d5b0494bf939315d3dc52b8cdc8b85a96"
)


def _v(**kw: Any) -> CcaVerifier:
    return CcaVerifier(ta_store=str(TA_STORE), **kw)


def _verify(token: bytes, rd: bytes, init: bytes | None = None, **kw: Any) -> dict[str, Any]:
    return _v(**kw).verify(
        {"token": list(token)}, expected_report_data=rd, expected_init_data_hash=init, now=NOW
    )


def test_contract() -> None:
    assert isinstance(_v(), EvidenceVerifier) and _v().tee == "cca"


def test_example_token_verifies_with_trustee_claims() -> None:
    claims = _verify(EXAMPLE.read_bytes(), EXAMPLE_CHALLENGE, rv_store=str(RV_STORE))
    assert claims["report_data"] == EXAMPLE_CHALLENGE.hex()
    assert claims["init_data"] == "00" * 64
    assert claims["realm"]["cca-realm-hash-algo-id"] == "sha-512"
    assert len(claims["realm"]["cca-realm-extensible-measurements"]) == 4
    assert set(claims["platform"]) == {"cca-platform-instance-id", "cca-platform-implementation-id"}
    # trustee's reference values for the example platform and realm
    assert claims["platform_reference_values"] == "match"
    assert claims["realm_reference_values"] == "match"
    with pytest.raises(CcaVerificationError, match="challenge"):
        _verify(EXAMPLE.read_bytes(), bytes(64))


def test_minted_token_binds_challenge_and_rpv() -> None:
    rd = hashlib.sha384(b"session").digest()
    init = hashlib.sha256(b"init-data").digest()
    claims = _verify(mint(rd, init), rd, init)
    assert claims["report_data"] == rd.ljust(64, b"\x00").hex()
    assert claims["init_data"] == init.ljust(64, b"\x00").hex()
    with pytest.raises(CcaVerificationError, match="init data"):
        _verify(mint(rd, init), rd, hashlib.sha256(b"other").digest())


def _flip_in(token: bytes, which: int, index: int, offset: int) -> bytes:
    top = cbor2.loads(token)
    msg = cbor2.loads(top.value[which])
    arr = list(msg.value)
    b = bytearray(arr[index])
    b[offset] ^= 1
    arr[index] = bytes(b)
    top.value[which] = cbor2.dumps(cbor2.CBORTag(18, arr))
    return cbor2.dumps(top)


@pytest.mark.parametrize(
    ("which", "index", "offset"),
    [
        (44234, 2, 1000),  # platform payload (a sw-component measurement)
        (44234, 3, 5),  # platform signature
        (44241, 2, 20),  # realm payload (the challenge)
        (44241, 2, 300),  # realm payload (RIM/REMs)
        (44241, 3, 90),  # realm signature
    ],
)
def test_byte_flips_in_signed_regions(which: int, index: int, offset: int) -> None:
    with pytest.raises(CcaVerificationError, match="signature"):
        _verify(_flip_in(EXAMPLE.read_bytes(), which, index, offset), EXAMPLE_CHALLENGE)


def test_rak_binding() -> None:
    # a validly CPAK-signed platform token that attests another RAK
    token = resign_platform({10: hashlib.sha256(b"another RAK").digest()})
    with pytest.raises(CcaVerificationError, match="RAK"):
        _verify(token, EXAMPLE_CHALLENGE)
    # the genuine challenge, re-signed: passes (the re-signing itself is sound)
    _, platform, _ = parts()
    assert _verify(resign_platform({10: platform[10]}), EXAMPLE_CHALLENGE)["report_data"]


def test_unknown_platform_has_no_trust_anchor(tmp_path: Path) -> None:
    store = json.loads(TA_STORE.read_text())
    store[0]["instance-id"] = "00" * 33
    (tmp_path / "ta.json").write_text(json.dumps(store))
    with pytest.raises(CcaVerificationError, match="trust anchor"):
        CcaVerifier(ta_store=str(tmp_path / "ta.json")).verify(
            {"token": list(EXAMPLE.read_bytes())}, expected_report_data=EXAMPLE_CHALLENGE,
            expected_init_data_hash=None, now=NOW,
        )  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"token": "***"},
        {"token": [256]},
        {"token": list(b"\xa0")},
        {"token": list(cbor2.dumps(cbor2.CBORTag(399, {44234: b"x"})))},
        {"token": list(cbor2.dumps(cbor2.CBORTag(399, {44234: b"x", 44241: b"y"})))},
        {"token": list(cbor2.dumps([1, 2]))},
    ],
)
def test_malformed(doc: Any) -> None:
    with pytest.raises(EvidenceFormatError):
        _v().verify(doc, expected_report_data=b"", expected_init_data_hash=None, now=NOW)


def test_parse_rejects_oversize() -> None:
    with pytest.raises(CcaFormatError):
        parse_token(b"\x00" * 70_000)


class FakeCcaTsm(OsConfigfs):
    """configfs-tsm as the kernel's arm_cca_guest provider behaves (no CCA hardware
    here): provider/generation on mkdir, generation bumped on write, outblob =
    a token minted for the written inblob."""

    def __init__(self, provider: bytes = b"arm_cca_guest\n") -> None:
        self.provider = provider
        self.inblobs: list[bytes] = []

    def make_entry(self, root: Path) -> Path:
        entry = super().make_entry(root)
        (entry / "provider").write_bytes(self.provider)
        (entry / "generation").write_bytes(b"0\n")
        return entry

    def remove_entry(self, entry: Path) -> None:
        for f in entry.iterdir():
            f.unlink()
        super().remove_entry(entry)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "inblob":
            self.inblobs.append(data)
            (path.parent / "outblob").write_bytes(mint(data))
            gen = int((path.parent / "generation").read_bytes()) + 1
            (path.parent / "generation").write_bytes(f"{gen}\n".encode())


def test_attester_configfs_tsm(tmp_path: Path) -> None:
    fake = FakeCcaTsm()
    rd = hashlib.sha384(b"nonce").digest()
    ev = asyncio.run(CcaAttester(tmp_path, fake).get_evidence(rd))
    assert fake.inblobs == [rd + bytes(16)]
    assert list(tmp_path.iterdir()) == []  # report object removed
    assert _verify(bytes(ev["token"]), rd)["report_data"] == (rd + bytes(16)).hex()
    with pytest.raises(CcaDeviceUnavailable, match="provider"):
        asyncio.run(CcaAttester(tmp_path, FakeCcaTsm(b"sev_guest\n")).get_evidence(rd))
    with pytest.raises(CcaDeviceUnavailable):
        asyncio.run(CcaAttester(tmp_path / "missing").get_evidence(rd))


def test_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ex = str(EXAMPLE)
    assert (
        main(
            [
                "--strict",
                "cca",
                ex,
                "--ta-store",
                str(TA_STORE),
                "--expect-report-data",
                EXAMPLE_CHALLENGE.hex(),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["realm_reference_values"] == "none"
    assert main(["--strict", "cca", ex, "--ta-store", str(TA_STORE), "--expect-report-data", "00"]) == 1
    (tmp_path / "bad").write_bytes(_flip_in(EXAMPLE.read_bytes(), 44241, 3, 1))
    assert main(["--strict", "cca", str(tmp_path / "bad"), "--ta-store", str(TA_STORE)]) == 1
    (tmp_path / "junk").write_bytes(b"\xff\xff")
    assert main(["--strict", "cca", str(tmp_path / "junk"), "--ta-store", str(TA_STORE)]) == 2
