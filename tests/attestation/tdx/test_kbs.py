"""TdxVerifier as the reference KBS calls it: evidence JSON, report-data and
init-data binding, event-log replay, trustee-shaped claims."""

from __future__ import annotations

import base64
import json

import pytest

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.eventlog.errors import EventLogReplayError
from attestation.eventlog.tcg import parse_event_log
from attestation.tdx.collateral import Collateral
from attestation.tdx.endorsements import StaticCollateral
from attestation.tdx.kbs import TdxVerifier, quote_claims
from attestation.tdx.pck import intel_sgx_root_ca
from attestation.tdx.quote import Quote
from attestation.tdx.verify import verify_quote
from attestation.verifier import EvidenceVerifier

from ._data import CCEL, FIXED_NOW, OCCLUM, Q4, Q6, QVL_TDX, QVL_TDX_AT, QVL_TDX_COLL, TDX
from ._forge import LATER, forge_quote, make_pki


def _evidence(quote: bytes, eventlog: bytes | None = None) -> dict[str, object]:
    return {
        "cc_eventlog": base64.b64encode(eventlog).decode() if eventlog is not None else None,
        "quote": base64.b64encode(quote).decode(),
    }


def test_implements_the_contract() -> None:
    assert isinstance(TdxVerifier(), EvidenceVerifier)
    assert TdxVerifier().tee == "tdx"


def test_report_data_binding() -> None:
    q = Q4.read_bytes()
    rd = Quote.from_bytes(q).report_data
    claims = TdxVerifier().verify(
        _evidence(q), expected_report_data=rd, expected_init_data_hash=None, now=FIXED_NOW
    )
    assert claims["report_data"] == rd.hex() and claims["debug"] is True and claims["tcb_status"] is None
    with pytest.raises(VerificationError, match="REPORTDATA"):
        TdxVerifier().verify(
            _evidence(q), expected_report_data=bytes(48), expected_init_data_hash=None, now=FIXED_NOW
        )


def test_init_data_binding_mrconfigid() -> None:
    q = Q6.read_bytes()
    body = Quote.from_bytes(q).td_body
    v = TdxVerifier()
    # a 32-byte digest is zero-padded to 48 before comparing; quote 6's MRCONFIGID is a full 48-byte value
    v.verify(
        _evidence(q),
        expected_report_data=body.report_data,
        expected_init_data_hash=body.mr_config_id,
        now=FIXED_NOW,
    )
    with pytest.raises(VerificationError, match="MRCONFIGID"):
        v.verify(
            _evidence(q),
            expected_report_data=body.report_data,
            expected_init_data_hash=bytes(32),
            now=FIXED_NOW,
        )


def test_sgx_quote_is_not_tdx_evidence() -> None:
    q = OCCLUM.read_bytes()
    with pytest.raises(EvidenceFormatError, match="not a TDX quote"):
        TdxVerifier().verify(
            _evidence(q), expected_report_data=b"", expected_init_data_hash=None, now=FIXED_NOW
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"quote": "not base64!"},
        {"quote": ""},
        {"cc_eventlog": None},
        {"quote": "AAAA", "extra": 1},
        '{"quote": "AAAA", "quote": "AAAA"}',
        [],
    ],
)
def test_malformed_evidence(bad: object) -> None:
    with pytest.raises(EvidenceFormatError):
        TdxVerifier().verify(bad, expected_report_data=b"", expected_init_data_hash=None, now=FIXED_NOW)


def test_event_log_that_does_not_replay_is_rejected() -> None:
    q = Q4.read_bytes()
    rd = Quote.from_bytes(q).report_data
    with pytest.raises(EventLogReplayError):
        TdxVerifier().verify(
            _evidence(q, CCEL.read_bytes()),
            expected_report_data=rd,
            expected_init_data_hash=None,
            now=FIXED_NOW,
        )


def test_event_log_that_replays_is_accepted_and_reported() -> None:
    log = CCEL.read_bytes()
    parsed = parse_event_log(log)
    patch = {328 + 48 * i: parsed.replay(i + 1) for i in range(4)}
    pki = make_pki(Q4.read_bytes())
    forged = forge_quote(Q4.read_bytes(), pki, body_patch=patch)
    v = TdxVerifier(root_ca=pki.root)
    rd = Quote.from_bytes(forged).report_data
    claims = v.verify(
        _evidence(forged, log), expected_report_data=rd, expected_init_data_hash=None, now=LATER
    )
    expected = json.loads((TDX / "trustee-eventlog/CCEL_data_out.json").read_text())["uefi_event_logs"]
    assert claims["uefi_event_logs"] == expected
    # one altered digest byte in the log breaks the replay
    bad = bytearray(log)
    i = bad.index(bytes.fromhex("394341b7182cd227"))
    bad[i] ^= 1
    with pytest.raises(EventLogReplayError):
        v.verify(
            _evidence(forged, bytes(bad)), expected_report_data=rd, expected_init_data_hash=None, now=LATER
        )


def test_claims_match_trustee_expected_output() -> None:
    expected = json.loads((TDX / "trustee/parse_tdx_claims_expected.json").read_text())
    v = verify_quote(Q4.read_bytes(), root_ca=intel_sgx_root_ca(), now=FIXED_NOW)
    claims = quote_claims(v, parse_event_log(CCEL.read_bytes()))
    for key, value in expected.items():
        assert claims[key] == value, key


def test_with_collateral_source_and_required_collateral() -> None:
    coll = Collateral.from_json(QVL_TDX_COLL.read_text())
    q = QVL_TDX.read_bytes()
    rd = Quote.from_bytes(q).report_data
    claims = TdxVerifier(collateral=StaticCollateral(coll)).verify(
        _evidence(q), expected_report_data=rd, expected_init_data_hash=None, now=QVL_TDX_AT
    )
    assert claims["tcb_status"] == "UpToDate" and claims["tcb_date"] == "2024-03-13T00:00:00Z"
    with pytest.raises(VerificationError, match="no collateral"):
        TdxVerifier(require_collateral=True).verify(
            _evidence(q), expected_report_data=rd, expected_init_data_hash=None, now=QVL_TDX_AT
        )


def test_config_style_options(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    q = QVL_TDX.read_bytes()
    rd = Quote.from_bytes(q).report_data
    v = TdxVerifier(collateral_service=f"file://{QVL_TDX_COLL}")
    claims = v.verify(_evidence(q), expected_report_data=rd, expected_init_data_hash=None, now=QVL_TDX_AT)
    assert claims["tcb_status"] == "UpToDate"
    pki = make_pki(Q4.read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    (d / "root.pem").write_bytes(pki.root.public_bytes(Encoding.PEM))
    forged = forge_quote(Q4.read_bytes(), pki)
    rd4 = Quote.from_bytes(forged).report_data
    TdxVerifier(root_ca_pem=str(d / "root.pem")).verify(
        _evidence(forged), expected_report_data=rd4, expected_init_data_hash=None, now=LATER
    )
    with pytest.raises(VerificationError):
        TdxVerifier().verify(
            _evidence(forged), expected_report_data=rd4, expected_init_data_hash=None, now=LATER
        )


def test_sha512_init_data_digest_is_truncated_to_mrconfigid() -> None:
    q = Q6.read_bytes()
    body = Quote.from_bytes(q).td_body
    TdxVerifier().verify(
        _evidence(q),
        expected_report_data=body.report_data,
        expected_init_data_hash=body.mr_config_id + b"\xee" * 16,  # 64-byte digest, first 48 bytes count
        now=FIXED_NOW,
    )
