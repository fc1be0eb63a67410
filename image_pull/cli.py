"""``coco-image``: pull images into bundles and unpack single layers.

Subcommands live beside their code: ``image_pull.pull_cli`` (``pull``) and
``image_pull.unpack.cli`` (``unpack-layer``); each provides
``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from coco_common.cli import add_version

__all__ = ["main"]

_COMMANDS = {
    "pull": ("image_pull.pull_cli", "pull an image into a bundle (rootfs/ + config.json)"),
    "unpack-layer": ("image_pull.unpack.cli", "unpack one layer tarball into a directory"),
    "gc": ("image_pull.store_cli", "release bundles and remove unreferenced layers from the store"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coco-image", description=__doc__.splitlines()[0])
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    rc: int = args._run(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
