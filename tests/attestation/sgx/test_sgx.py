"""``sgx``: trustee's Occlum quote and dcap-qvl's SGX quote with collateral
(tests/fixtures/evidence/sgx, MANIFEST.md there), byte flips, the Gramine
attester's file interface, and ``coco-verify sgx``."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import EvidenceFormatError, UnsupportedPlatform, VerificationError
from attestation.sgx.attester import SgxAttester
from attestation.sgx.kbs import SgxVerifier
from attestation.tdx.collateral import Collateral
from attestation.verifier import EvidenceVerifier
from attestation.verify_cli import main

SGX = Path(__file__).resolve().parents[2] / "fixtures" / "evidence" / "sgx"
OCCLUM = SGX / "occlum_quote.dat"
QVL = SGX / "sgx_quote"
AT = datetime(2025, 6, 1, tzinfo=UTC)
QVL_AT = datetime(2025, 7, 1, tzinfo=UTC)
TDX_QUOTE = SGX.parent / "az-tdx-vtpm" / "td-quote.bin"


def _ev(raw: bytes) -> dict[str, str]:
    return {"quote": base64.b64encode(raw).decode()}


def _rd(raw: bytes) -> bytes:
    return raw[48 + 320 : 48 + 384]


def test_contract() -> None:
    assert isinstance(SgxVerifier(), EvidenceVerifier) and SgxVerifier().tee == "sgx"


def test_occlum_quote_verifies_with_trustee_claims() -> None:
    raw = OCCLUM.read_bytes()
    claims = SgxVerifier().verify(
        _ev(raw), expected_report_data=b"test", expected_init_data_hash=None, now=AT
    )
    assert claims["header"]["version"] == "0300" and claims["header"]["att_key_type"] == "0200"
    assert claims["body"]["mr_enclave"].startswith("8f173e4613ff05c5")
    assert claims["report_data"] == (b"test" + bytes(60)).hex()
    assert claims["init_data"] == "00" * 64 and claims["tcb_status"] is None
    assert "platform_instance_id" in claims
    with pytest.raises(VerificationError, match="REPORT_DATA"):
        SgxVerifier().verify(_ev(raw), expected_report_data=b"tesT", expected_init_data_hash=None, now=AT)
    with pytest.raises(VerificationError, match="CONFIGID"):
        SgxVerifier().verify(_ev(raw), expected_report_data=b"test", expected_init_data_hash=b"\x01", now=AT)


def test_dcap_qvl_quote_tcb_status_with_collateral() -> None:
    raw = QVL.read_bytes()
    coll = Collateral.from_json((SGX / "sgx_quote_collateral.json").read_bytes())
    claims = SgxVerifier(collateral=coll).verify(
        _ev(raw), expected_report_data=_rd(raw), expected_init_data_hash=None, now=QVL_AT
    )
    # the same status and advisories as dcap-qvl's own test expects
    assert claims["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert claims["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]


@pytest.mark.parametrize(
    "offset",
    [
        2,  # header: attestation key type stays, version bytes change -> parse or signature
        48 + 64,  # body: MRENCLAVE
        48 + 320,  # body: REPORT_DATA
        436 + 10,  # quote signature
        436 + 64 + 10,  # attestation key
        436 + 128 + 100,  # QE report
        436 + 128 + 384 + 5,  # QE report signature
    ],
)
def test_byte_flips(offset: int) -> None:
    raw = bytearray(OCCLUM.read_bytes())
    raw[offset] ^= 0x01
    with pytest.raises((VerificationError, EvidenceFormatError)):
        SgxVerifier().verify(
            _ev(bytes(raw)), expected_report_data=_rd(bytes(raw)), expected_init_data_hash=None, now=AT
        )


def test_tdx_quote_is_not_sgx_and_malformed() -> None:
    with pytest.raises(VerificationError, match="SGX"):
        SgxVerifier().verify(
            _ev(TDX_QUOTE.read_bytes()), expected_report_data=b"", expected_init_data_hash=None, now=AT
        )
    for bad in ({}, {"quote": ""}, {"quote": "***"}, {"quote": "AA==", "x": 1}, "nope"):
        with pytest.raises(EvidenceFormatError):
            SgxVerifier().verify(bad, expected_report_data=b"", expected_init_data_hash=None, now=AT)


def test_gramine_attester_file_interface(tmp_path: Path) -> None:
    """Gramine's /dev/attestation is a pseudo-filesystem; a folder with the same
    files stands in for it (no SGX hardware here)."""
    (tmp_path / "attestation_type").write_text("dcap")
    (tmp_path / "quote").write_bytes(OCCLUM.read_bytes())
    ev = asyncio.run(SgxAttester(tmp_path).get_evidence(b"test"))
    assert (tmp_path / "user_report_data").read_bytes() == b"test" + bytes(60)
    assert SgxVerifier().verify(ev, expected_report_data=b"test", expected_init_data_hash=None, now=AT)
    (tmp_path / "attestation_type").write_text("epid")
    with pytest.raises(UnsupportedPlatform):
        SgxAttester(tmp_path)


def test_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert (
        main(["--strict", "sgx", str(OCCLUM), "--at", "2025-06-01", "--expect-report-data", b"test".hex()])
        == 3
    )
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["body"]["isv_svn"] == "0000"
    coll = str(SGX / "sgx_quote_collateral.json")
    assert (
        main(["--strict", "sgx", str(QVL), "--at", "2025-07-01", "--collateral", coll]) == 3
    )  # no nonce given
    assert (
        json.loads(capsys.readouterr().out.split("\n", 1)[1])["tcb_status"]
        == "ConfigurationAndSWHardeningNeeded"
    )
    raw = bytearray(OCCLUM.read_bytes())
    raw[48 + 64] ^= 1
    (tmp_path / "bad").write_bytes(bytes(raw))
    assert main(["--strict", "sgx", str(tmp_path / "bad"), "--at", "2025-06-01"]) == 1
    assert main(["--strict", "sgx", str(OCCLUM), "--at", "2025-06-01", "--expect-report-data", "00"]) == 1
    assert main(["--strict", "sgx", str(OCCLUM), "--at", "1999-01-01"]) == 1
