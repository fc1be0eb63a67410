"""Fitting a digest or report data into a TEE's fixed-size field.

Every TEE binds the caller's data (report data, the init-data digest) into a
field of its own size: the data is truncated to that size or zero-padded up to
it, as trustee's ``regularize_data`` and Kata's ``adjustProperLength`` do. One
helper, so the attesters that fill the fields and the verifiers that compare
them cannot disagree."""

from __future__ import annotations

__all__ = ["resize"]


def resize(data: bytes, size: int) -> bytes:
    """``data`` truncated or zero-padded to exactly ``size`` bytes."""
    if size < 0:
        raise ValueError("a field size cannot be negative")
    return bytes(data[:size]).ljust(size, b"\0")
