"""trustee's TDX evidence envelope (:mod:`attestation.tdx.evidence`)."""

from __future__ import annotations

import base64
import json

import pytest

from attestation.errors import EvidenceFormatError
from attestation.tdx.errors import TdxFormatError
from attestation.tdx.evidence import MAX_EVIDENCE_SIZE, TdxEvidence

from ._data import CCEL, Q4


def test_round_trip_as_text_bytes_and_parsed_json() -> None:
    ev = TdxEvidence(Q4.read_bytes(), CCEL.read_bytes())
    doc = ev.to_json()
    assert doc == {
        "cc_eventlog": base64.b64encode(CCEL.read_bytes()).decode(),
        "quote": base64.b64encode(Q4.read_bytes()).decode(),
    }
    for form in (doc, json.dumps(doc), json.dumps(doc).encode()):
        assert TdxEvidence.from_json(form) == ev
    no_log = TdxEvidence(Q4.read_bytes(), None)
    assert no_log.to_json()["cc_eventlog"] is None
    assert TdxEvidence.from_json(no_log.to_json()) == no_log
    # an empty event log counts as none, as trustee's attester sends it
    assert TdxEvidence.from_json({"quote": doc["quote"], "cc_eventlog": ""}).cc_eventlog is None


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ('{"quote": "AAAA", "quote": "AAAA"}', "does not parse: duplicate key"),
        ("[]", "must be a JSON object"),
        ({"cc_eventlog": None}, "'quote' and optional 'cc_eventlog' only"),
        ({"quote": "AAAA", "extra": 1}, "'quote' and optional 'cc_eventlog' only"),
        ({"quote": ""}, "empty quote"),
        ({"quote": 7}, "quote must be a base64 string"),
        ({"quote": "AB=="}, "quote is not standard base64"),  # non-canonical trailing bits
        ({"quote": "AA-_"}, "quote is not standard base64"),  # the URL alphabet
        ({"quote": "A" * (90 * 1024)}, "quote too large"),
        ({"quote": "AAAA", "cc_eventlog": 1}, "cc_eventlog must be a base64 string"),
    ],
)
def test_malformed_evidence_is_a_typed_format_error(bad: object, match: str) -> None:
    with pytest.raises(TdxFormatError, match=match) as info:
        TdxEvidence.from_json(bad)
    assert isinstance(info.value, EvidenceFormatError)


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(TdxFormatError, match=f"larger than {MAX_EVIDENCE_SIZE} bytes"):
        TdxEvidence.from_json(b"[" * (MAX_EVIDENCE_SIZE + 1))
