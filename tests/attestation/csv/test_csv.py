"""Hygon CSV: trustee's recorded evidence (report signed by its PEK), the
HRK → HSK → CEK chain from csv-rs' test certificates, and a full chain built
with generated SM2 keys (tests/fixtures/evidence/csv, MANIFEST.md there)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attestation.csv import sm2
from attestation.csv.certs import CaCertificate, CsvCertificate, pinned_hrk
from attestation.csv.errors import CsvCertError
from attestation.csv.evidence import parse_evidence
from attestation.csv.kbs import CsvVerifier
from attestation.errors import EvidenceFormatError, VerificationError
from attestation.verifier import EvidenceVerifier
from attestation.verify_cli import main

from .chain import GeneratedChain

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


def test_generated_chain_verifies_end_to_end(tmp_path: Path) -> None:
    chain = GeneratedChain.create(tmp_path)
    hrk = CaCertificate.from_bytes(chain.hrk)
    rd = secrets.token_bytes(64)
    doc = chain.evidence(rd, build=1234)
    report_doc = doc["attestation_report"]
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
    assert main(["--strict", "csv", str(EVIDENCE)]) == 1
    assert "HSK/CEK" in capsys.readouterr().err
    assert main(["--strict", "csv", str(EVIDENCE), "--pek-only", "--expect-report-data", "00" * 64]) == 3
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["chain_verified"] is False
    assert main(["--strict", "csv", str(EVIDENCE), "--hsk-cek", str(CSV / "hsk_cek.cert")]) == 1
    doc = _doc()
    doc["attestation_report"]["data"][10] ^= 1
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(["--strict", "csv", str(tmp_path / "bad.json"), "--pek-only"]) == 1
