"""Strict JSON for security-relevant input (DESIGN §4.6), one implementation for
the whole project: duplicate keys, the non-standard constants ``NaN`` /
``Infinity``, invalid UTF-8 and runaway nesting are errors, and the size is
checked before any parsing starts.

Callers name their own error class and what the document is, so the message
reads in the caller's words (``error=CryptoError, what="sealed secret"`` gives
``CryptoError("sealed secret: duplicate key 'kid'")``), with the underlying
:class:`ValueError` kept as the cause. Anchor: containers/image's
``ParanoidUnmarshalJSONObject``, the one strict reader every policy type uses."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["strict_loads", "strict_object"]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:64]!r}")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _over(untrusted: str | bytes | bytearray, limit: int) -> bool:
    """True when the document is larger than ``limit`` bytes (a str counted as UTF-8)."""
    if len(untrusted) > limit:
        return True
    if isinstance(untrusted, str) and 4 * len(untrusted) > limit:
        # a character is at most 4 bytes of UTF-8: encode only when that could matter
        return len(untrusted.encode("utf-8", "surrogatepass")) > limit
    return False


def _parse(untrusted: str | bytes | bytearray, limit: int | None) -> Any:
    if limit is not None and _over(untrusted, limit):
        raise ValueError(f"larger than {limit} bytes")
    try:
        return json.loads(untrusted, object_pairs_hook=_object, parse_constant=_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    return str(exc)


def strict_loads(
    untrusted: str | bytes | bytearray,
    *,
    limit: int | None = None,
    error: type[Exception] | None = None,
    what: str = "JSON",
) -> Any:
    """Parse ``untrusted`` strictly.

    Anything wrong (over ``limit`` bytes, duplicate keys, NaN/Infinity, invalid
    UTF-8, nesting deeper than the parser recurses, malformed text) raises
    ``error(f"{what}: <reason>")`` chained from the :class:`ValueError` that names
    the reason. Without ``error`` that :class:`ValueError` itself is raised
    (:class:`json.JSONDecodeError` and :class:`UnicodeDecodeError` are among them)
    for the caller to translate. The document's content is never quoted beyond a
    truncated key name."""
    if error is None:
        return _parse(untrusted, limit)
    try:
        return _parse(untrusted, limit)
    except ValueError as exc:
        raise error(f"{what}: {_reason(exc)}") from exc


def strict_object(
    untrusted: str | bytes | bytearray,
    *,
    limit: int | None = None,
    error: type[Exception] = ValueError,
    what: str = "JSON",
) -> dict[str, Any]:
    """:func:`strict_loads` for documents whose top level must be an object; errors
    always read ``error(f"{what}: <reason>")``."""
    doc = strict_loads(untrusted, limit=limit, error=error, what=what)
    if not isinstance(doc, dict):
        raise error(f"{what}: expected a JSON object, not {_kind(doc)}")
    return doc


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null", dict: "an object"}.get(
        type(value), "a number"
    )
