"""The one lookup for the recorded evidence vectors under ``tests/fixtures/evidence``.

Every test and benchmark finds its vectors here, inside the repository. A vector
that is not there is an error (:class:`MissingVector`), never a skip: a missing
file means a broken checkout, not absent hardware. What each file is and where it
came from: ``tests/fixtures/evidence/<platform>/MANIFEST.md`` and ``PROVENANCE.md``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EVIDENCE", "PLATFORMS", "MissingVector", "evidence", "vector"]

#: ``tests/fixtures/evidence`` of this checkout
EVIDENCE = Path(__file__).resolve().parents[1] / "fixtures" / "evidence"
PLATFORMS = ("snp", "tdx", "nvidia")


class MissingVector(FileNotFoundError):
    """A recorded vector is not in the checkout."""


def evidence(platform: str) -> Path:
    """The folder of one platform's vectors; it must exist."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown evidence platform {platform!r} (one of {', '.join(PLATFORMS)})")
    folder = EVIDENCE / platform
    if not folder.is_dir():
        raise MissingVector(f"evidence folder {folder} is missing from the checkout")
    return folder


def vector(platform: str, rel: str) -> Path:
    """``tests/fixtures/evidence/<platform>/<rel>``; it must exist and be a file."""
    path = evidence(platform) / rel
    if not path.is_file():
        raise MissingVector(f"evidence vector {platform}/{rel} is missing from the checkout ({path})")
    return path
