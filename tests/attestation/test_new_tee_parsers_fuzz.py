"""Hostile bytes into the parsers added for the Azure vTPM, TPM, CCA, SE and
CSV TEEs: every failure is a typed EvidenceFormatError, never another
exception (bounded examples; no timing)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.azure.evidence import AzSnpEvidence
from attestation.azure.hcl import HclReport
from attestation.cca.token import parse_token
from attestation.csv.report import CsvReport
from attestation.errors import EvidenceFormatError
from attestation.se.arcb import boot_hdr_tags
from attestation.tpm.structures import parse_attest, parse_public, parse_signature

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "evidence"
HCL = (FIX / "az-snp-vtpm" / "hcl-report.bin").read_bytes()
TOKEN = (FIX / "cca" / "misc" / "cca-example-token.cbor").read_bytes()


def _typed(fn: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        fn(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_tpm_structures(data: bytes) -> None:
    for fn in (parse_attest, parse_public, parse_signature):
        _typed(fn, data)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(HCL) - 1), st.integers(0, 255), st.integers(0, len(HCL)))
def test_hcl_mutations(offset: int, value: int, cut: int) -> None:
    b = bytearray(HCL)
    b[offset] = value
    _typed(HclReport.from_bytes, bytes(b[:cut]))
    with contextlib.suppress(EvidenceFormatError):
        HclReport.from_bytes(bytes(b)).ak_public()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(TOKEN) - 1), st.integers(0, 255), st.integers(0, len(TOKEN)))
def test_cca_token_mutations(offset: int, value: int, cut: int) -> None:
    b = bytearray(TOKEN)
    b[offset] = value
    _typed(parse_token, bytes(b))
    _typed(parse_token, bytes(TOKEN[:cut]))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=800))
def test_se_header_and_csv_report(data: bytes) -> None:
    _typed(boot_hdr_tags, data)
    with contextlib.suppress(EvidenceFormatError):
        CsvReport.parse(data[:16].ljust(16, b"\x00"), 1, data.ljust(4096, b"\x00")[:4096])


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_azure_evidence_json(doc: object) -> None:
    _typed(AzSnpEvidence.from_json, json.dumps(doc).encode())
