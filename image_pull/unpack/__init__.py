"""Layer unpack: stream an OCI layer tar into a directory, confined to it.

    from image_pull.unpack import open_decompressed, unpack_layer, UnpackOptions

    with open(blob, "rb") as raw:
        stats = unpack_layer(open_decompressed(raw, media_type), dest,
                             options=UnpackOptions(flatten=False), compressed_size=size)

``unpack_layer`` reads the stream front to back exactly once (never seeks,
never buffers a layer in memory) and to its end, so a digest computed by a
wrapper around the stream covers the whole layer.  See
:mod:`image_pull.unpack.extract` for the changeset semantics and
:mod:`image_pull.unpack.tarstream` for the tar dialects accepted.
"""

from __future__ import annotations

from .confine import clean_path, openat2_available
from .decompress import MEDIA_TYPE_CODECS, codec_for_media_type, open_decompressed, read_ahead
from .errors import (
    DecompressError,
    EntryConflict,
    ForbiddenEntry,
    InsufficientSpace,
    LimitExceeded,
    MalformedTar,
    MissingHardlinkTarget,
    PathEscape,
    UnpackError,
    UnsupportedEntry,
)
from .extract import UnpackOptions, UnpackStats, unpack_layer
from .tarstream import EntryType, ReaderLimits, TarEntry, TarReader

__all__ = [
    "MEDIA_TYPE_CODECS",
    "DecompressError",
    "EntryConflict",
    "EntryType",
    "ForbiddenEntry",
    "InsufficientSpace",
    "LimitExceeded",
    "MalformedTar",
    "MissingHardlinkTarget",
    "PathEscape",
    "ReaderLimits",
    "TarEntry",
    "TarReader",
    "UnpackError",
    "UnpackOptions",
    "UnpackStats",
    "UnsupportedEntry",
    "clean_path",
    "codec_for_media_type",
    "open_decompressed",
    "openat2_available",
    "read_ahead",
    "unpack_layer",
]
