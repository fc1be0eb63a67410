"""The raw TDREPORT parser (:mod:`attestation.tdx.tdreport`) on a recorded report."""

from __future__ import annotations

import hashlib

import pytest

from attestation.errors import EvidenceFormatError
from attestation.tdx.tdreport import TdReport

from ._data import TDREPORT


def test_tdreport_fields_and_internal_hashes() -> None:
    raw = TDREPORT.read_bytes()
    r = TdReport.from_bytes(raw)
    assert r.rtmrs[0].hex().startswith("f4ec1a04")
    assert r.rtmrs[1].hex().startswith("4e5f8826")
    assert hashlib.sha384(raw[512:1024]).digest() == raw[80:128]
    bad = bytearray(raw)
    bad[600] ^= 1  # inside TDINFO -> its hash in REPORTMACSTRUCT no longer matches
    with pytest.raises(EvidenceFormatError, match="TDINFO"):
        TdReport.from_bytes(bytes(bad))
    with pytest.raises(EvidenceFormatError):
        TdReport.from_bytes(raw[:1000])
