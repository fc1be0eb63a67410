"""JSON text exactly as Go's ``encoding/json.Marshal`` writes it for the
values the glue serialises (maps of strings, string slices, structs with
fixed field order): compact, map keys sorted, ``<``, ``>``, ``&``, U+2028 and
U+2029 escaped as ``\\u003c``-style sequences, other non-ASCII left as UTF-8."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["go_marshal"]

_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_marshal(value: Any) -> str:
    """Serialise ``value``; dicts keep their insertion order (Go structs) unless
    they are maps, which the caller passes through :func:`sorted` itself."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in _HTML.items():
        text = text.replace(ch, esc)
    return text
