"""Errors raised while decompressing and unpacking a layer.

    image_pull.errors.UnpackError      (root for this package; re-exported here)
    ├── MalformedTar                   the tar stream is not a well-formed archive
    ├── DecompressError                the gzip/zstd stream is corrupt or unsupported
    ├── UnsupportedEntry               an entry type or media type we do not handle
    ├── ForbiddenEntry                 an entry the options forbid (device nodes, bad whiteouts)
    ├── PathEscape                     an entry would resolve outside DEST or replace DEST itself
    ├── EntryConflict                  an entry cannot be placed (parent is a file, ...)
    │   └── MissingHardlinkTarget      a hardlink's target is not in DEST (it may live in a lower layer)
    └── LimitExceeded                  a configured limit (entries, bytes, ratio, path length) was hit

    image_pull.errors.InsufficientSpace (a StoreError; re-exported here): the destination
                                       filesystem is full or over quota (ENOSPC/EDQUOT)

Messages name the offending entry (escaped, truncated) and never include file contents.
"""

from __future__ import annotations

import errno

from image_pull.errors import InsufficientSpace, UnpackError

__all__ = [
    "NO_SPACE_ERRNOS",
    "DecompressError",
    "EntryConflict",
    "ForbiddenEntry",
    "InsufficientSpace",
    "LimitExceeded",
    "MalformedTar",
    "MissingHardlinkTarget",
    "PathEscape",
    "UnpackError",
    "UnsupportedEntry",
    "describe_name",
    "no_space",
]

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""errno values that mean the destination is full (blocks or inodes) or over quota."""


class MalformedTar(UnpackError):
    """The layer is not a well-formed tar archive (bad header, checksum, truncation)."""


class DecompressError(UnpackError):
    """The compressed layer stream is corrupt or uses an unsupported codec."""


class UnsupportedEntry(UnpackError):
    """The archive uses an entry type or media type this unpacker does not handle."""


class ForbiddenEntry(UnpackError):
    """The entry is well formed but not allowed (device nodes when disabled, bad whiteouts)."""


class PathEscape(UnpackError):
    """An entry, link target or whiteout would leave the root or change the root's type."""


class EntryConflict(UnpackError):
    """An entry cannot be placed: a parent is not a directory, a hardlink target is missing, ..."""


class MissingHardlinkTarget(EntryConflict):
    """A hardlink's target is not in DEST: not earlier in this layer, nor (when flattening) below.

    In overlay form the target may live in a lower layer; ``target`` is its clean path
    relative to DEST.
    """

    def __init__(self, message: str, target: bytes = b"") -> None:
        super().__init__(message)
        self.target = target


class LimitExceeded(UnpackError):
    """A configured unpack limit was exceeded."""


def describe_name(untrusted_name: bytes, limit: int = 160) -> str:
    """Printable, bounded rendering of an archive name for error messages."""
    text = untrusted_name[:limit].decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    if len(untrusted_name) > limit:
        text += "..."
    return f"'{text}'"


def no_space(exc: OSError, what: str = "") -> InsufficientSpace:
    """The typed error for an ENOSPC/EDQUOT ``exc`` (raise it ``from exc``); ``what`` prefixes it."""
    text = (
        "disk quota exceeded on the destination"
        if exc.errno == errno.EDQUOT
        else "no space (or no free inodes) left on the destination"
    )
    return InsufficientSpace(f"{what}: {text}" if what else text)
