"""``coco-image unpack-layer [--media-type T] [--flatten] LAYER DEST``.

Unpacks one layer blob (gzip, zstd or plain tar; detected from its first
bytes unless ``--media-type`` is given) with the same :func:`unpack_layer`
the pull engine uses.  ``LAYER`` may be ``-`` for standard input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import BinaryIO

from .decompress import open_decompressed
from .errors import InsufficientSpace, UnpackError
from .extract import UnpackOptions, unpack_layer

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("layer", metavar="LAYER", help="layer blob (gzip, zstd or plain tar), or - for stdin")
    parser.add_argument(
        "dest", metavar="DEST", type=Path, help="directory to unpack into (created if missing)"
    )
    parser.add_argument("--media-type", help="OCI/Docker layer media type (default: detect from content)")
    parser.add_argument(
        "--flatten",
        action="store_true",
        help="apply whiteouts as deletions onto DEST instead of writing overlay whiteout devices",
    )
    parser.add_argument("--no-devices", action="store_true", help="refuse char/block device entries")
    parser.add_argument(
        "--no-same-owner",
        action="store_true",
        help="do not chown entries to their archive uid/gid (default when not root)",
    )
    parser.add_argument(
        "--max-entries", type=int, default=UnpackOptions.max_entries, help="refuse layers with more entries"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=UnpackOptions.max_total_bytes,
        help="refuse layers larger than this once decompressed (bytes)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print what was unpacked")


def run(args: argparse.Namespace) -> int:
    options = UnpackOptions(
        flatten=args.flatten,
        allow_devices=not args.no_devices,
        preserve_owner=(os.geteuid() == 0) and not args.no_same_owner,
        max_entries=args.max_entries,
        max_total_bytes=args.max_bytes,
    )
    dest: Path = args.dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"coco-image unpack-layer: cannot create {dest}: {exc.strerror}", file=sys.stderr)
        return 1
    raw: BinaryIO
    size: int | None = None
    try:
        if args.layer == "-":
            raw = sys.stdin.buffer
        else:
            raw = open(args.layer, "rb")  # noqa: SIM115 - closed below
            size = os.fstat(raw.fileno()).st_size
    except OSError as exc:
        print(f"coco-image unpack-layer: cannot open {args.layer}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        with open_decompressed(raw, args.media_type, threaded=True) as tar_stream:
            stats = unpack_layer(tar_stream, dest, options=options, compressed_size=size)
    except (UnpackError, InsufficientSpace) as exc:
        print(f"coco-image unpack-layer: {exc}", file=sys.stderr)
        return 1
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
    if args.verbose:
        print(
            f"{stats.entries} entries: {stats.files} files ({stats.bytes_written} bytes), "
            f"{stats.directories} dirs, {stats.symlinks} symlinks, {stats.hardlinks} hardlinks, "
            f"{stats.devices} devices, {stats.fifos} fifos, {stats.whiteouts} whiteouts, "
            f"{stats.opaque_dirs} opaque; {stats.tar_bytes} tar bytes in {stats.seconds:.3f}s"
        )
    return 0
