"""``confidential-data-hub [-c cdh.toml]``: the CDH daemon.

Without ``-c`` the configuration comes from the kernel command line, as
upstream. Exit status 1 on a configuration or start-up error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cdh.config import CdhConfig, export_environment, load_config
from cdh.errors import CdhError
from cdh.hub import Hub, build_services
from coco_rpc import serve

__all__ = ["main", "run"]

log = logging.getLogger("cdh")


async def run(cfg: CdhConfig, *, stop: asyncio.Event | None = None) -> None:
    hub = Hub(cfg)
    try:
        await hub.prefetch_credentials()
        await serve(cfg.socket, build_services(hub), stop=stop)
    finally:
        await hub.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="confidential-data-hub", description="Confidential Data Hub")
    ap.add_argument("-c", "--config", type=Path, help="path to cdh.toml (default: kernel command line)")
    args = ap.parse_args(argv)
    level = os.environ.get("RUST_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config)
        export_environment(cfg, os.environ)
    except (CdhError, OSError) as exc:
        print(f"confidential-data-hub: {exc}", file=sys.stderr)
        return 1
    if "RUST_LOG" not in os.environ:
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
    log.info("CDH starting: kbc=%s socket=%s (config from %s)", cfg.kbc.name, cfg.socket, cfg.source)
    try:
        asyncio.run(run(cfg))
    except CdhError as exc:
        print(f"confidential-data-hub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
