"""Quote and TDREPORT parsing on the real vectors; truncation and malformed headers."""

from __future__ import annotations

import json
import struct

import pytest

from attestation.errors import EvidenceFormatError
from attestation.tdx.errors import UnknownQuoteFormat
from attestation.tdx.quote import BodyType, Quote, TdReportBody

from ._data import ALL_QUOTES, OCCLUM, Q4, Q5, Q6, QVL_SGX, TDX


def test_v4_fields_match_trustee_expected_claims() -> None:
    expected = json.loads((TDX / "trustee/parse_tdx_claims_expected.json").read_text())["quote"]
    q = Quote.from_bytes(Q4.read_bytes())
    assert q.header.version == 4 and q.body_type is BodyType.TD_REPORT_10
    b = q.td_body
    eb = expected["body"]
    assert b.mr_td.hex() == eb["mr_td"]
    assert b.mr_seam.hex() == eb["mr_seam"]
    assert b.tee_tcb_svn.hex() == eb["tcb_svn"]
    assert b.xfam.hex() == eb["xfam"]
    assert b.td_attributes.hex() == eb["td_attributes"]
    assert [r.hex() for r in b.rtmrs] == [eb[f"rtmr_{i}"] for i in range(4)]
    assert b.report_data.hex() == eb["report_data"]
    assert q.header.user_data.hex() == expected["header"]["user_data"]
    assert b.debug and b.sept_ve_disable
    assert len(q.signed_bytes) == 632 and q.trailing == b""


def test_v5_td15_body() -> None:
    q = Quote.from_bytes(Q5.read_bytes())
    assert q.header.version == 5 and q.body_type is BodyType.TD_REPORT_15
    assert isinstance(q.body, TdReportBody)
    assert q.body.tee_tcb_svn2 is not None and q.body.mr_service_td is not None
    assert len(q.body.tee_tcb_svn2) == 16 and len(q.body.mr_service_td) == 48
    assert len(q.signed_bytes) == 48 + 6 + 648


def test_trailing_bytes_are_kept_aside() -> None:
    q = Quote.from_bytes(Q6.read_bytes())
    assert len(q.trailing) == 70 and set(q.trailing) == {0}


@pytest.mark.parametrize("path", [OCCLUM, QVL_SGX])
def test_sgx_v3_quotes_parse(path: object) -> None:
    q = Quote.from_bytes(path.read_bytes())  # type: ignore[attr-defined]
    assert q.header.version == 3 and not q.is_tdx
    with pytest.raises(EvidenceFormatError):
        _ = q.td_body


@pytest.mark.parametrize("path", ALL_QUOTES, ids=lambda p: p.name)
def test_every_truncation_is_a_format_error(path: object) -> None:
    data = path.read_bytes()  # type: ignore[attr-defined]
    q = Quote.from_bytes(data)
    end = len(data) - len(q.trailing)
    # every structural boundary and a spread of interior offsets
    cuts = sorted(
        {0, 1, 47, 48, 53, 54, len(q.signed_bytes), len(q.signed_bytes) + 3, end - 1, *range(0, end, 97)}
    )
    for cut in cuts:
        with pytest.raises(EvidenceFormatError):
            Quote.from_bytes(data[:cut])


def test_unknown_version_and_body_type() -> None:
    data = bytearray(Q5.read_bytes())
    bad = bytes(data)
    bad = struct.pack("<H", 7) + bad[2:]
    with pytest.raises(EvidenceFormatError, match="version"):
        Quote.from_bytes(bad)
    data[48:50] = struct.pack("<H", 9)
    with pytest.raises(EvidenceFormatError, match="body type"):
        Quote.from_bytes(bytes(data))
    data = bytearray(Q5.read_bytes())
    data[50:54] = struct.pack("<I", 584)  # type 3 claims TD 1.0 size
    with pytest.raises(EvidenceFormatError, match="must be 648"):
        Quote.from_bytes(bytes(data))


def test_wrong_attestation_key_type() -> None:
    data = bytearray(Q4.read_bytes())
    data[2:4] = struct.pack("<H", 3)
    with pytest.raises(UnknownQuoteFormat, match="key type"):
        Quote.from_bytes(bytes(data))


def test_oversized_signature_length_is_rejected() -> None:
    data = bytearray(Q4.read_bytes())
    data[632:636] = struct.pack("<I", 10**6)
    with pytest.raises(EvidenceFormatError, match="truncated"):
        Quote.from_bytes(bytes(data))


def _as_v5(v4_or_v3: bytes, body_type: int) -> bytes:
    """Re-wrap a v3/v4 quote as v5 with an explicit body descriptor (unsigned: parse-only)."""
    q = Quote.from_bytes(v4_or_v3)
    header = bytearray(v4_or_v3[:48])
    header[0:2] = struct.pack("<H", 5)
    body = q.signed_bytes[48:]
    rest = v4_or_v3[len(q.signed_bytes) : len(v4_or_v3) - len(q.trailing)]
    if q.header.version == 3:  # v5 always wraps the QE data in certification type 6
        sig_len = struct.unpack_from("<I", rest)[0]
        sd = rest[4 : 4 + sig_len]
        inner = sd[128:]
        sd = sd[:128] + struct.pack("<HI", 6, len(inner)) + inner
        rest = struct.pack("<I", len(sd)) + sd
    return bytes(header) + struct.pack("<HI", body_type, len(body)) + body + rest


def test_v5_with_td10_and_sgx_bodies() -> None:
    q = Quote.from_bytes(_as_v5(Q4.read_bytes(), 2))
    assert q.header.version == 5 and q.body_type is BodyType.TD_REPORT_10
    assert q.td_body.mr_td == Quote.from_bytes(Q4.read_bytes()).td_body.mr_td
    assert len(q.signed_bytes) == 48 + 6 + 584
    q = Quote.from_bytes(_as_v5(QVL_SGX.read_bytes(), 1))
    assert q.body_type is BodyType.SGX_ENCLAVE and not q.is_tdx
    with pytest.raises(EvidenceFormatError, match="TEE type"):
        Quote.from_bytes(
            _as_v5(Q4.read_bytes(), 1)[:48]
            + Quote.from_bytes(_as_v5(QVL_SGX.read_bytes(), 1)).signed_bytes[48:]
        )
