"""Bounds on untrusted documents before a parser, the policy engine or a
token sees them: nesting depth, node count and text that cannot be
re-encoded (lone surrogates), checked iteratively in one linear pass; and
the elision of long unsigned strings copied into tokens."""

from __future__ import annotations

import hashlib
from typing import Any

from .errors import KbsAttestationError

__all__ = ["MAX_CLAIM_STRING", "BoundsError", "check_shape", "elide_long_strings"]

#: longest string copied verbatim from unsigned input into a token; longer ones become a digest
MAX_CLAIM_STRING = 8 * 1024


class BoundsError(KbsAttestationError, ValueError):
    """A document exceeds a bound or holds text that cannot be encoded; the message is safe to log.
    Bounds guard evidence and claims: an attestation failure (trustee's ``AttestationError``)."""

    variant = "AttestationError"


def _encodable(s: str) -> bool:
    if type(s) is str and s.isascii():  # a flag CPython keeps (O(1)): ASCII always encodes
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_shape(untrusted: Any, *, max_depth: int, max_items: int, what: str) -> None:
    """Raise :class:`BoundsError` unless ``untrusted`` (JSON-like: dict, list, str, int, float,
    bool, None) nests at most ``max_depth`` containers deep, holds at most ``max_items`` values
    and keys in all, and every string and key is valid Unicode (no lone surrogates)."""
    stack: list[tuple[Any, int]] = [(untrusted, 1)]
    items = 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if items > max_items:
            raise BoundsError(f"{what} holds more than {max_items} values")
        if isinstance(node, str):  # the most common node first
            if not _encodable(node):
                raise BoundsError(f"{what} has a string that is not valid Unicode text")
        elif isinstance(node, dict):
            if depth > max_depth:
                raise BoundsError(f"{what} nests deeper than {max_depth}")
            for k, v in node.items():
                if not isinstance(k, str) or not _encodable(k):
                    raise BoundsError(f"{what} has a key that is not valid Unicode text")
                items += 1
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                raise BoundsError(f"{what} nests deeper than {max_depth}")
            stack.extend((v, depth + 1) for v in node)
        elif node is not None and not isinstance(node, bool | int | float):
            raise BoundsError(f"{what} holds a {type(node).__name__}")


def _digest(s: str) -> str:
    return "sha384:" + hashlib.sha384(s.encode("utf-8")).hexdigest()


def elide_long_strings(doc: Any, limit: int = MAX_CLAIM_STRING) -> Any:
    """A copy of a checked document (see :func:`check_shape`) where each string longer than
    ``limit`` characters is replaced by ``"sha384:<hex>"`` of its UTF-8 bytes."""
    if isinstance(doc, str):
        return doc if len(doc) <= limit else _digest(doc)
    if isinstance(doc, dict):
        return {k: elide_long_strings(v, limit) for k, v in doc.items()}
    if isinstance(doc, list):
        return [elide_long_strings(v, limit) for v in doc]
    return doc
