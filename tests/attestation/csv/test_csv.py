"""Hygon CSV: trustee's recorded evidence (report signed by its PEK), the
HRK → HSK → CEK chain from csv-rs' test certificates, and a full chain built
with generated SM2 keys (tests/fixtures/evidence/csv, MANIFEST.md there)."""

from __future__ import annotations

import json
import secrets
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attestation.csv import sm2
from attestation.csv.certs import CaCertificate, CsvCertError, CsvCertificate, pinned_hrk
from attestation.csv.verifier import CsvVerifier, parse_evidence
from attestation.errors import EvidenceFormatError, VerificationError
from attestation.verifier import EvidenceVerifier
from attestation.verify_cli import main

CSV = Path(__file__).resolve().parents[2] / "fixtures" / "evidence" / "csv"
EVIDENCE = CSV / "csv_evidence.json"
CHIP = "KPA64911240507"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _doc() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(EVIDENCE.read_bytes())
    return out


def test_sm2_sign_verify_and_user_id() -> None:
    d = secrets.randbelow(sm2.N - 1) + 1
    x, y = sm2.public_key(d)
    r, s = sm2.sign(d, b"HYGON-SSD-PEK", b"message")
    assert sm2.verify(x, y, b"HYGON-SSD-PEK", b"message", r, s)
    assert not sm2.verify(x, y, b"HYGON-SSD-CEK", b"message", r, s)
    assert not sm2.verify(x, y, b"HYGON-SSD-PEK", b"messagE", r, s)
    assert not sm2.verify(x, y + 1, b"HYGON-SSD-PEK", b"message", r, s)  # not on the curve
    assert sm2.sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_recorded_report_is_signed_by_its_pek() -> None:
    report, pek, chip, has_hsk_cek = parse_evidence(EVIDENCE.read_bytes())
    assert (report.version, chip, has_hsk_cek) == (1, CHIP, False)
    assert pek.key.uid == b"HYGON-SSD-PEK" and pek.key.verify(report.signed, report.r, report.s)
    # unmasked with the anonce: the signature usage/algorithm read PEK/SM2
    assert (report.sig_usage, report.sig_algo) == (0x1002, 4)


@pytest.mark.parametrize("offset", [0, 70, 130, 150, 178, 200, 300])
def test_report_byte_flips(offset: int) -> None:
    doc = _doc()
    doc["attestation_report"]["data"][offset] ^= 1
    report, pek, _, _ = parse_evidence(doc)
    assert not pek.key.verify(report.signed, report.r, report.s)


def test_pek_byte_flip_changes_the_key() -> None:
    doc = _doc()
    doc["cert_chain"]["pek"]["body"]["data"]["pubkey"]["key"]["x"][3] ^= 1
    report, pek, _, _ = parse_evidence(doc)
    assert not pek.key.verify(report.signed, report.r, report.s)


def test_pinned_hrk_and_csv_rs_chain() -> None:
    hrk = pinned_hrk()
    raw = (CSV / "hsk_cek.cert").read_bytes()
    hsk, cek = CaCertificate.from_bytes(raw[:832]), CsvCertificate.from_bytes(raw[832:])
    assert hsk.signed_by(hrk) and cek.signed_by(hsk.key)
    bad = bytearray(raw)
    bad[100] ^= 1
    assert not CaCertificate.from_bytes(bytes(bad[:832])).signed_by(hrk)
    bad = bytearray(raw)
    bad[832 + 500] ^= 1
    assert not CsvCertificate.from_bytes(bytes(bad[832:])).signed_by(hsk.key)


def test_verifier_refuses_without_the_chips_hsk_cek(tmp_path: Path) -> None:
    v = CsvVerifier()
    assert isinstance(v, EvidenceVerifier) and v.tee == "csv"
    with pytest.raises(VerificationError, match="HSK/CEK"):
        v.verify(_doc(), expected_report_data=bytes(64), expected_init_data_hash=None, now=NOW)
    # another chip's HSK/CEK (csv-rs' test certificates) under this chip's name: the PEK does not chain
    (tmp_path / CHIP).mkdir()
    (tmp_path / CHIP / "hsk_cek.cert").write_bytes((CSV / "hsk_cek.cert").read_bytes())
    with pytest.raises(CsvCertError, match="PEK"):
        CsvVerifier(hsk_cek_dir=str(tmp_path)).verify(
            _doc(), expected_report_data=bytes(64), expected_init_data_hash=None, now=NOW
        )


# --- a whole chain with generated keys ----------------------------------------


def _le(v: int) -> list[int]:
    return list(v.to_bytes(72, "little"))


def _ca_cert(d: int, usage: int, uid: bytes, signer: tuple[int, bytes]) -> bytes:
    x, y = sm2.public_key(d)
    body = struct.pack("<I", 1) + bytes(32) + struct.pack("<I", usage) + bytes(24)
    body += struct.pack("<I", 3) + x.to_bytes(72, "little") + y.to_bytes(72, "little")
    body += struct.pack("<H", len(uid)) + uid.ljust(254, b"\x00") + bytes(108)
    r, s = sm2.sign(signer[0], signer[1], body)
    return body + r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(112)


def _csv_body(d: int, usage: int, uid: bytes) -> bytes:
    x, y = sm2.public_key(d)
    body = (
        struct.pack("<IBBHIII", 1, 1, 3, 0, usage, 4, 3) + x.to_bytes(72, "little") + y.to_bytes(72, "little")
    )
    return body + struct.pack("<H", len(uid)) + uid.ljust(254, b"\x00") + bytes(16) + bytes(608)


def _csv_cert(d: int, usage: int, uid: bytes, signer: tuple[int, bytes]) -> bytes:
    body = _csv_body(d, usage, uid)
    r, s = sm2.sign(signer[0], signer[1], body)
    slot = struct.pack("<II", 0x1004, 4) + r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(368)
    return body + slot + bytes(520)


def _pek_json(raw: bytes) -> dict[str, Any]:
    b = raw
    sigs = []
    for i in range(2):
        o = 1044 + 520 * i
        u, a = struct.unpack_from("<II", b, o)
        sigs.append(
            {"usage": u, "algo": a, "signature": {"r": list(b[o + 8 : o + 80]), "s": list(b[o + 80 : o + 152])},
             "_reserved": list(b[o + 152 : o + 520])}
        )  # fmt: skip
    ver, major, minor, res1, usage, algo, g = struct.unpack_from("<IBBHIII", b, 0)
    return {
        "body": {
            "ver": ver,
            "data": {
                "firmware": {"major": major, "minor": minor},
                "reserved1": res1,
                "pubkey": {
                    "usage": usage,
                    "algo": algo,
                    "key": {"g": g, "x": list(b[20:92]), "y": list(b[92:164])},
                },
                "uid_size": struct.unpack_from("<H", b, 164)[0],
                "user_id": list(b[166:420]),
                "sid": list(b[420:436]),
                "reserved2": list(b[436:1044]),
            },
        },
        "sigs": sigs,
    }


def test_generated_chain_verifies_end_to_end(tmp_path: Path) -> None:
    keys = {n: secrets.randbelow(sm2.N - 1) + 1 for n in ("hrk", "hsk", "cek", "pek")}
    hrk = CaCertificate.from_bytes(
        _ca_cert(keys["hrk"], 0, b"HYGON-SSD-HRK", (keys["hrk"], b"HYGON-SSD-HRK"))
    )
    hsk = _ca_cert(keys["hsk"], 0x13, b"HYGON-SSD-HSK", (keys["hrk"], b"HYGON-SSD-HRK"))
    cek = _csv_cert(keys["cek"], 0x1004, b"HYGON-SSD-CEK", (keys["hsk"], b"HYGON-SSD-HSK"))
    pek = _csv_cert(keys["pek"], 0x1002, b"HYGON-SSD-PEK", (keys["cek"], b"HYGON-SSD-CEK"))
    (tmp_path / "CHIP1").mkdir()
    (tmp_path / "CHIP1" / "hsk_cek.cert").write_bytes(hsk + cek)
    rd = secrets.token_bytes(64)
    data = bytearray(4096)
    data[64:128] = rd
    struct.pack_into("<IIII", data, 176, 0x1, 0x1002, 4, 1234)
    r, s = sm2.sign(keys["pek"], b"HYGON-SSD-PEK", bytes(data[:1024]))
    data[1024:1096], data[1096:1168] = r.to_bytes(72, "little"), s.to_bytes(72, "little")
    report_doc: dict[str, Any] = {"magic": list(b"ATTESTATION_EXT\x00"), "flags": 1, "data": list(data)}
    doc: dict[str, Any] = {
        "attestation_report": report_doc,
        "cert_chain": {"pek": _pek_json(pek), "hsk_cek": None},
        "serial_number": list(b"CHIP1".ljust(64, b"\x00")),
        "cc_eventlog": None,
    }
    v = CsvVerifier(hsk_cek_dir=str(tmp_path), hrk=hrk)
    claims = v.verify(doc, expected_report_data=rd, expected_init_data_hash=None, now=NOW)
    assert claims["version"] == "2" and claims["build"] == 1234 and claims["report_data"] == rd.hex()
    assert claims["policy"]["nodbg"] == 1 and claims["serial_number"] == "CHIP1"
    with pytest.raises(VerificationError, match="REPORT_DATA"):
        v.verify(doc, expected_report_data=bytes(64), expected_init_data_hash=None, now=NOW)
    report_doc["data"][500] ^= 1  # inside the signed 1024 bytes (an RTMR/reserved area)
    with pytest.raises(CsvCertError, match="report signature"):
        v.verify(doc, expected_report_data=rd, expected_init_data_hash=None, now=NOW)
    # the same chain is refused under the real (pinned) Hygon root
    with pytest.raises(CsvCertError, match="HSK"):
        CsvVerifier(hsk_cek_dir=str(tmp_path)).verify_chain(*parse_evidence(doc)[:3])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("serial_number"),
        lambda d: d.update(extra=1),
        lambda d: d["attestation_report"].update(magic=list(b"ATTESTATION_EXT\x00"), flags=7),
        lambda d: d["attestation_report"].update(data=[0] * 10),
        lambda d: d.update(serial_number=list(b"../../etc")),
        lambda d: d["cert_chain"]["pek"]["body"].pop("data"),
    ],
)
def test_malformed(mutate: Any) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(EvidenceFormatError):
        CsvVerifier().verify(doc, expected_report_data=bytes(64), expected_init_data_hash=None, now=NOW)


def test_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["csv", str(EVIDENCE)]) == 1
    assert "HSK/CEK" in capsys.readouterr().err
    assert main(["csv", str(EVIDENCE), "--pek-only", "--expect-report-data", "00" * 64]) == 0
    assert json.loads(capsys.readouterr().out)["chain_verified"] is False
    assert main(["csv", str(EVIDENCE), "--hsk-cek", str(CSV / "hsk_cek.cert")]) == 1
    doc = _doc()
    doc["attestation_report"]["data"][10] ^= 1
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(["csv", str(tmp_path / "bad.json"), "--pek-only"]) == 1
