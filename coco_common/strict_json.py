"""Strict JSON for security-relevant input (DESIGN §4.6), one implementation for
the whole project: duplicate keys, the non-standard constants ``NaN`` /
``Infinity`` and runaway nesting are errors. Callers translate the
:class:`ValueError` into their own package's error."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["strict_loads"]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:64]!r}")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(untrusted: str | bytes | bytearray) -> Any:
    """``json.loads`` that raises :class:`ValueError` on duplicate keys, NaN/Infinity,
    invalid UTF-8 and nesting deeper than the parser can recurse (which ``json``
    reports as :class:`RecursionError`, an error no ``except ValueError`` would catch)."""
    try:
        return json.loads(untrusted, object_pairs_hook=_object, parse_constant=_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
