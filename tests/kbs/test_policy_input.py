"""kbs.policy hands the input document to the Rego engine with its own conversion loop:
the engine must see exactly what ``regopy.Input`` gives it, for every JSON shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from regopy import Input, Interpreter

from kbs.policy import _input

_json: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=25,
)


def _seen(inp: Any) -> str:
    i = Interpreter()
    i.set_input(inp)
    return str(i.query("input"))


@settings(max_examples=150, deadline=None)
@given(_json)
def test_engine_sees_what_regopy_input_gives(doc: Any) -> None:
    try:
        want = _seen(Input(doc))
    except Exception as exc:
        with pytest.raises(type(exc)):
            _seen(_input(doc))
        return
    assert _seen(_input(doc)) == want


@pytest.mark.parametrize("doc", [{"s": {1, 2}}, (1, "a"), {"nul": "a\x00b", "deep": [[[{"k": None}]]]}])
def test_other_types_and_edge_strings(doc: Any) -> None:
    assert _seen(_input(doc)) == _seen(Input(doc))
