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
from coco_common.cli import add_log_options, add_version, configure_logging, rust_log_level, version
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
    add_version(ap)
    add_log_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args)
    try:
        cfg = load_config(args.config)
        export_environment(cfg, os.environ)
    except (CdhError, OSError) as exc:
        print(f"confidential-data-hub: {exc}", file=sys.stderr)
        return 1
    if args.log_level is None and rust_log_level() is None:
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
    log.info("CDH starting: kbc=%s socket=%s (config from %s)", cfg.kbc.name, cfg.socket, cfg.source)
    log.info(
        "effective settings",
        extra={
            "version": version(),
            "config": str(args.config) if args.config else "kernel command line",
            "kbc": cfg.kbc.name,
            "kbs_url": cfg.kbc.url,
            "kbs_cert_pinned": bool(cfg.kbc.kbs_cert),
            "socket": cfg.socket,
            "aa_socket": cfg.aa_socket,
            "image_work_dir": str(cfg.image.work_dir),
            "image_signature_policy": bool(
                cfg.image.image_security_policy_uri or cfg.image.image_security_policy
            ),
            "skip_sealed_secret_verification": cfg.skip_sealed_secret_verification,
            "unknown_config_keys": list(cfg.unknown_keys),
        },
    )
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
