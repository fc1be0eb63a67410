"""``coco-image gc``: release bundles and remove unreferenced layers from the layer store.

    coco-image gc --work-dir DIR [--release-bundle DIR ...] [--remove-image DIGEST ...]

Bundles are released first (overlay unmounted, rootfs removed, GC root
dropped), then image records, then every layer no image record or live
bundle references is removed (layers in use by a running pull are skipped).
Prints one line per removed layer and a summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from image_pull.errors import ImagePullError
from image_pull.reference import parse_digest

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    default_work = Path("/run/kata-containers/image")
    parser.add_argument("--work-dir", type=Path, default=default_work, help="layer store")
    parser.add_argument("--release-bundle", type=Path, action="append", default=[], help="bundle to release")
    parser.add_argument(
        "--remove-image", action="append", default=[], metavar="DIGEST", help="drop an image record"
    )


async def _main(args: argparse.Namespace) -> int:
    from image_pull.puller import ImagePuller, PullerConfig

    async with ImagePuller(PullerConfig(work_dir=args.work_dir)) as puller:
        for b in args.release_bundle:
            await puller.release_bundle(b)
        for d in args.remove_image:
            if not puller.store.remove_image(parse_digest(d)):
                print(f"coco-image gc: no image record for {d}", file=sys.stderr)
        removed = puller.store.gc()
    for key in removed:
        print(f"sha256:{key}")
    print(f"removed {len(removed)} layers", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except ImagePullError as exc:
        print(f"coco-image gc: {exc}", file=sys.stderr)
        return 1
