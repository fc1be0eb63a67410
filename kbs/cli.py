"""``kbs --config-file kbs-config.toml`` (also ``-c``, or ``KBS_CONFIG_FILE``).

``kbs --config-file F --check`` validates ``F`` without starting anything (like ``nginx -t``):
it prints the effective config as JSON on stdout with the ignored keys (``warnings``) and what
would stop this KBS from starting (``startup_problems``, ``would_start``), and exits 0; a config
that does not load exits 1 with the offending key on stderr. ``--strict`` also exits 1 when there
is any warning or startup problem."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
from collections.abc import Sequence

from coco_common.cli import add_version, log_level_type, rust_log_level

from .config import KbsServerConfig, effective_config, load_config, startup_problems
from .errors import KbsConfigError, KbsError
from .logs import setup_logging
from .server import serve

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kbs", description="Reference Key Broker Service (trustee 0.4.0 compatible)"
    )
    add_version(p)
    p.add_argument(
        "-c",
        "--config-file",
        default=os.environ.get("KBS_CONFIG_FILE"),
        help="kbs-config.toml (default: $KBS_CONFIG_FILE)",
    )
    p.add_argument(
        "--log-level",
        type=log_level_type,
        help="trace, debug, info, warn, error, off "
        "(default: $KBS_LOG_LEVEL, else the level in $RUST_LOG, else info)",
    )
    p.add_argument(
        "--plain-logs",
        action="store_true",
        help="readable key=value logs instead of JSON lines (same fields)",
    )
    p.add_argument("--check", action="store_true", help="validate the config, print it as JSON, do not start")
    p.add_argument("--strict", action="store_true", help="with --check: fail on any warning")
    args = p.parse_args(argv)
    level = args.log_level
    if level is None and os.environ.get("KBS_LOG_LEVEL"):
        try:
            level = log_level_type(os.environ["KBS_LOG_LEVEL"])
        except argparse.ArgumentTypeError as exc:
            p.error(f"KBS_LOG_LEVEL: {exc}")
    level = level or rust_log_level() or "INFO"
    setup_logging("ERROR" if args.check else level, json_lines=not args.plain_logs)
    if not args.config_file:
        p.error("--config-file (or the KBS_CONFIG_FILE environment variable) is required")
    if args.strict and not args.check:
        p.error("--strict goes with --check")
    if args.check:
        return _check(args.config_file, strict=args.strict)
    cfg: KbsServerConfig | None = None
    try:
        cfg = load_config(args.config_file)
        problems = startup_problems(cfg)
        if problems:
            raise KbsConfigError("; ".join(problems))
        logging.getLogger("kbs").info("effective settings", extra=_settings(cfg))
        asyncio.run(serve(cfg))
    except KbsError as exc:
        logging.getLogger("kbs").error("startup failed: %s", exc.detail)
        print(f"Error: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        msg = _os_startup_error(exc, cfg.http_server.sockets if cfg is not None else ())
        logging.getLogger("kbs").error("startup failed: %s", msg)
        print(f"Error: {msg}", file=sys.stderr)
        return 1
    return 0


def _os_startup_error(exc: OSError, sockets: Sequence[str]) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"http_server.sockets {', '.join(sockets)}: address already in use (another KBS?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"http_server.sockets {', '.join(sockets)}: no such local address"
    if exc.errno == errno.EACCES:
        return f"http_server.sockets {', '.join(sockets)}: permission denied (a port below 1024 needs root)"
    return f"{(exc.strerror or str(exc)).lower()}" + (f": {exc.filename}" if exc.filename else "")


def _settings(cfg: KbsServerConfig) -> dict[str, object]:
    """The security-relevant effective settings, for one INFO line at start (no secret)."""
    st = cfg.storage
    where = {"LocalFs": st.local_fs_dir, "LocalJson": st.local_json_dir}.get(st.storage_type)
    a = cfg.admin
    return {
        "sockets": list(cfg.http_server.sockets),
        "tls": not cfg.http_server.insecure_http,
        "admin_mode": a.mode,
        "admin_issuers": [i.issuer for i in a.identity_providers if i.issuer],
        "admin_personas": [pp.id for pp in a.personas],
        "storage": st.storage_type,
        "storage_dir": where,
        "attestation_service": cfg.attestation_service.type,
        # trustee's verifier_config sections and the TEEs each reaches
        "trustee_verifier_sections": {
            k: list(v) for k, v in cfg.attestation_service.trustee_verifier_config.applied_to.items()
        },
        "trusted_token_certs": len(cfg.attestation_token.trusted_certs_paths),
        "insecure_header_jwk": cfg.attestation_token.insecure_header_jwk,
        "config_warnings": len(cfg.warnings),
    }


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
