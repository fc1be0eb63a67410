"""kbs_protocol.jcs writes the common case with the C JSON encoder: its bytes must be
rfc8785's for every JSON value, the fast path or not."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs_protocol.jcs import _plain, canonicalize

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json: Any = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30,
)


def _reference(value: Any) -> bytes | type[Exception]:
    try:
        return bytes(rfc8785.dumps(value))
    except Exception as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_same_bytes_as_rfc8785(value: Any) -> None:
    _same_as_rfc8785(value)


def _same_as_rfc8785(value: Any) -> None:
    """canonicalize gives rfc8785's bytes, or raises what rfc8785 raises."""
    want = _reference(value)
    if isinstance(want, bytes):
        assert canonicalize(value) == want
    else:
        with pytest.raises(want):
            canonicalize(value)


@pytest.mark.parametrize(
    "value",
    [
        {
            "nonce": "abc+/=",
            "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "_-", "y": "A"},
        },
        {
            "b": '\x00\x1f\x7f\u2028\u2029"\\\b\f\n\r\t',
            "a": ["é", "😀", "\ue000"],
            "c": [True, False, None, 0, -1],
        },
        {"k": 2**53 - 1, "j": -(2**53 - 1)},
    ],
)
def test_fast_path_cases(value: Any) -> None:
    assert _plain(value)
    assert canonicalize(value) == bytes(rfc8785.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        {"\ue000": 1, "😀": 2},  # code-point order differs from UTF-16 order: rfc8785 sorts
        {"x": 1.5},
        {"x": 2**53},
        {"x": "\ud800"},  # a lone surrogate: rfc8785's verdict
    ],
)
def test_other_values_take_rfc8785(value: Any) -> None:
    _same_as_rfc8785(value)
