"""The one helper that fits report data and init-data digests into a TEE's
field, and the verifiers that use it: data shorter than the field is
zero-padded, longer is truncated, in the attesters and the verifiers alike."""

from __future__ import annotations

import pytest

from attestation._binding import resize


@pytest.mark.parametrize(
    ("data", "size", "want"),
    [
        (b"\x01\x02", 4, b"\x01\x02\0\0"),
        (b"\x01\x02\x03\x04\x05", 4, b"\x01\x02\x03\x04"),
        (b"\x01\x02\x03\x04", 4, b"\x01\x02\x03\x04"),
        (b"", 3, b"\0\0\0"),
        (b"\xff" * 48, 32, b"\xff" * 32),  # SNP HOST_DATA from a SHA-384 digest
        (b"\xaa" * 32, 64, b"\xaa" * 32 + b"\0" * 32),  # REPORT_DATA from a SHA-256 digest
        (b"abc", 0, b""),
    ],
)
def test_resize_pads_or_truncates(data: bytes, size: int, want: bytes) -> None:
    got = resize(data, size)
    assert got == want and len(got) == size and type(got) is bytes


def test_resize_takes_any_bytes_like_and_refuses_a_negative_size() -> None:
    assert resize(bytearray(b"\x01"), 2) == b"\x01\0"
    assert resize(memoryview(b"\x01\x02\x03"), 2) == b"\x01\x02"
    with pytest.raises(ValueError, match="negative"):
        resize(b"x", -1)


def test_every_tee_module_uses_the_one_helper() -> None:
    """No TEE package keeps a private pad/truncate: the idiom appears only in the helper."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "attestation"
    idiom = re.compile(r"\[:\s*[A-Za-z_0-9]+\s*\]\s*\.ljust\(|\*\s*max\(0,\s*[A-Za-z_0-9]+\s*-\s*len\(")
    copies = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*.py"))
        if p.name != "_binding.py" and idiom.search(p.read_text())
    ]
    assert copies == []
