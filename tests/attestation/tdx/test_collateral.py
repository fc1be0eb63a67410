"""Collateral (:mod:`attestation.tdx.collateral`): signatures, freshness, strict JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.errors import VerificationError
from attestation.tdx.collateral import Collateral
from attestation.tdx.errors import CollateralError
from attestation.tdx.verify import verify_quote

from ._data import (
    QVL_TDX,
    QVL_TDX_AT,
    QVL_TDX_COLL,
    ROOT,
    collateral_from,
)


def test_stale_collateral_is_rejected_at_now() -> None:
    with pytest.raises(VerificationError, match=r"expired|not current"):
        verify_quote(
            QVL_TDX.read_bytes(),
            root_ca=ROOT,
            now=datetime(2026, 6, 1, tzinfo=UTC),
            collateral=collateral_from(QVL_TDX_COLL),
        )
    with pytest.raises(VerificationError, match=r"issued after|not current"):
        verify_quote(
            QVL_TDX.read_bytes(),
            root_ca=ROOT,
            now=datetime(2025, 6, 1, tzinfo=UTC),
            collateral=collateral_from(QVL_TDX_COLL),
        )

    no_crls = Collateral.from_json(
        json.dumps({**json.loads(QVL_TDX_COLL.read_text()), "root_ca_crl": "", "pck_crl": ""})
    )
    with pytest.raises(CollateralError, match="TCB info expired"):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=datetime(2026, 6, 1, tzinfo=UTC), collateral=no_crls
        )


def test_tampered_tcb_info_fails_its_signature() -> None:
    d = json.loads(QVL_TDX_COLL.read_text())
    d["tcb_info"] = d["tcb_info"].replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"', 1)
    with pytest.raises(VerificationError, match="TCB info: signature"):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=Collateral.from_json(json.dumps(d))
        )


def test_tampered_crl_fails() -> None:
    d = json.loads(QVL_TDX_COLL.read_text())
    crl = bytearray.fromhex(d["pck_crl"])
    crl[40] ^= 1
    d["pck_crl"] = crl.hex()
    with pytest.raises(VerificationError):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=Collateral.from_json(json.dumps(d))
        )


def test_strict_collateral_json() -> None:
    text = QVL_TDX_COLL.read_text()
    with pytest.raises(CollateralError, match="unknown keys"):
        Collateral.from_json(text[:-1] + ', "extra": 1}')
    with pytest.raises(CollateralError, match="duplicate"):
        Collateral.from_json(text[:-1] + ', "tcb_info": "x"}')
    with pytest.raises(CollateralError):
        Collateral.from_json("[]")


def test_root_pem_roundtrip_is_der_identical() -> None:
    assert ROOT.public_bytes(Encoding.DER)[:2] == b"\x30\x82"
