"""``kbs --config-file kbs-config.toml`` (also ``-c``, or ``KBS_CONFIG_FILE``).

``kbs --config-file F --check`` validates ``F`` without starting anything (like ``nginx -t``):
it prints the effective config as JSON on stdout with the ignored keys (``warnings``) and what
would stop this KBS from starting (``startup_problems``, ``would_start``), and exits 0; a config
that does not load exits 1 with the offending key on stderr. ``--strict`` also exits 1 when there
is any warning or startup problem."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config import effective_config, load_config, startup_problems
from .errors import ConfigError, KbsError
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
    p.add_argument("--check", action="store_true", help="validate the config, print it as JSON, do not start")
    p.add_argument("--strict", action="store_true", help="with --check: fail on any warning")
    args = p.parse_args(argv)
    setup_logging("error" if args.check else args.log_level, json_lines=not args.plain_logs)
    if not args.config_file:
        p.error("--config-file is required")
    if args.strict and not args.check:
        p.error("--strict goes with --check")
    if args.check:
        return _check(args.config_file, strict=args.strict)
    try:
        cfg = load_config(args.config_file)
        problems = startup_problems(cfg)
        if problems:
            raise ConfigError("; ".join(problems))
        asyncio.run(serve(cfg))
    except KbsError as exc:
        logging.getLogger("kbs").error("startup failed: %s", exc.detail)
        print(f"Error: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        logging.getLogger("kbs").error("startup failed: %s", exc)
        return 1
    return 0


def _check(path: str, *, strict: bool) -> int:
    try:
        cfg = load_config(path)
    except KbsError as exc:
        print(f"Error: {path}: {exc.detail}", file=sys.stderr)
        return 1
    problems = startup_problems(cfg)
    report = {
        "config_file": path,
        "config": effective_config(cfg),
        "warnings": list(cfg.warnings),
        "startup_problems": problems,
        "would_start": not problems,
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for pr in problems:
        print(f"startup problem: {pr}", file=sys.stderr)
    if strict and (cfg.warnings or problems):
        print(f"Error: {path}: strict check failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
