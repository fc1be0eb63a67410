"""A minimal DER reader for the few certificate extensions NVIDIA uses.

Only definite-length encodings are accepted (DER forbids the rest); every
length is checked against the enclosing buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation.nvidia.errors import NvidiaFormatError

__all__ = ["Tlv", "parse_all", "parse_one"]


@dataclass(frozen=True)
class Tlv:
    """One DER element: the identifier octet, its content, and whether it is constructed."""

    tag: int
    content: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    @property
    def tag_class(self) -> int:
        """0 universal, 1 application, 2 context-specific, 3 private."""
        return self.tag >> 6

    @property
    def tag_number(self) -> int:
        return self.tag & 0x1F

    def children(self) -> list[Tlv]:
        if not self.constructed:
            raise NvidiaFormatError("DER: primitive element has no children")
        return parse_all(self.content)


def _read(buf: bytes, pos: int) -> tuple[Tlv, int]:
    if pos + 2 > len(buf):
        raise NvidiaFormatError("DER: truncated element header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise NvidiaFormatError("DER: multi-byte tags are not supported")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise NvidiaFormatError("DER: indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > len(buf):
            raise NvidiaFormatError("DER: bad length encoding")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(buf):
        raise NvidiaFormatError("DER: element runs past its container")
    return Tlv(tag, buf[pos:end]), end


def parse_one(buf: bytes) -> Tlv:
    """Exactly one element filling ``buf``."""
    tlv, end = _read(buf, 0)
    if end != len(buf):
        raise NvidiaFormatError("DER: trailing bytes after element")
    return tlv


def parse_all(buf: bytes) -> list[Tlv]:
    """The sequence of elements that fills ``buf``."""
    out: list[Tlv] = []
    pos = 0
    while pos < len(buf):
        tlv, pos = _read(buf, pos)
        out.append(tlv)
    return out
