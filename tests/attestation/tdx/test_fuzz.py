"""Mutated quotes and event logs only ever fail with the package's own errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.eventlog.tcg import parse_event_log
from attestation.tdx.pck import intel_sgx_root_ca
from attestation.tdx.quote import Quote
from attestation.tdx.verify import verify_quote

from ._data import CCEL, FIXED_NOW, Q4, Q5

ROOT = intel_sgx_root_ca()
QUOTES = [Q4.read_bytes(), Q5.read_bytes()]
LOG = CCEL.read_bytes()[:4096]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.integers(0, 5005), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 5006)),
)
def test_mutated_quotes_fail_cleanly(which: int, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(QUOTES[which])
    for off, x in edits:
        data[off % len(data)] ^= x
    if cut is not None:
        data = data[:cut]
    try:
        v = verify_quote(bytes(data), root_ca=ROOT, now=FIXED_NOW)
    except AttestationError:
        return
    # only edits outside everything signed (e.g. PEM line breaks, trailing padding) may still verify
    original = Quote.from_bytes(QUOTES[which])
    assert v.quote.signed_bytes == original.signed_bytes
    assert v.quote.signature_data.qe_report == original.signature_data.qe_report


def test_a_pck_key_with_an_unknown_algorithm_is_a_format_error() -> None:
    """Found by the fuzz test above: one bit flipped in the PCK certificate's key
    algorithm OID made cryptography raise UnsupportedAlgorithm, not an AttestationError."""
    data = bytearray(QUOTES[1])
    data[3543] ^= 1
    with pytest.raises(EvidenceFormatError, match="UnsupportedAlgorithm"):
        verify_quote(bytes(data), root_ca=ROOT, now=FIXED_NOW)


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_event_logs_fail_cleanly(edits: list[tuple[int, int]]) -> None:
    data = bytearray(LOG)
    for off, x in edits:
        data[off] ^= x
    with contextlib.suppress(AttestationError):
        parse_event_log(bytes(data))
