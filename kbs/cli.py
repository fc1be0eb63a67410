"""``kbs --config-file kbs-config.toml`` (also ``-c``, or ``KBS_CONFIG_FILE``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .config import load_config
from .errors import KbsError
from .logs import setup_logging
from .server import serve

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kbs", description="Reference Key Broker Service (trustee 0.4.0 compatible)"
    )
    p.add_argument("-c", "--config-file", default=os.environ.get("KBS_CONFIG_FILE"), help="kbs-config.toml")
    p.add_argument("--log-level", default=os.environ.get("KBS_LOG_LEVEL", "info"))
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs instead of JSON lines")
    args = p.parse_args(argv)
    setup_logging(args.log_level, json_lines=not args.plain_logs)
    if not args.config_file:
        p.error("--config-file is required")
    try:
        cfg = load_config(args.config_file)
        asyncio.run(serve(cfg))
    except KbsError as exc:
        logging.getLogger("kbs").error("startup failed: %s", exc.detail)
        print(f"Error: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        logging.getLogger("kbs").error("startup failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
