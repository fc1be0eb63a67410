"""``attestation-agent``: serve the Attestation Agent on ttRPC or gRPC.

Flags as upstream's binaries (``ttrpc-aa``/``grpc-aa``):
``-a/--attestation_sock ADDR`` (``unix://...`` → ttRPC, ``host:port`` → gRPC),
``-c/--config-file PATH``, ``-i/--initdata-digest B64``, ``-t/--initdata-toml PATH``
(the TOML wins when both are given). Start-up order: config → initdata bind
(failure aborts the start) → event log → serve. Logging: ``--log-level`` >
``RUST_LOG`` > ``[log].level`` > ``info``. SIGTERM/SIGINT/SIGHUP shut down
cleanly and remove the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from attestation.aa.agent import AttestationAgent
from attestation.aa.config import AaConfig, resolve_config
from attestation.aa.errors import AaConfigError, AaError, InitDataBindError
from attestation.aa.measure import eventlog_path, open_measurer
from attestation.aa.rpc import grpc_service, ttrpc_service
from attestation.detect import HostView, detect_primary
from attestation.errors import AttestationError, UnsupportedPlatform
from attestation.initdata import InitData, InitDataError, load_initdata
from coco_common.b64 import b64_decode
from coco_common.cli import add_version, version
from coco_common.logfmt import setup_logging
from coco_rpc import AA_SOCKET, parse_address, serve

__all__ = ["build_parser", "main", "run"]

log = logging.getLogger("attestation-agent")

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attestation-agent", description="Confidential Containers Attestation Agent"
    )
    p.add_argument(
        "-a",
        "--attestation_sock",
        "--attestation-sock",
        dest="attestation_sock",
        default=AA_SOCKET,
        help=f"address to serve on: unix:///path (ttRPC) or host:port (gRPC); default {AA_SOCKET}",
    )
    p.add_argument(
        "-c", "--config-file", dest="config_file", help="aa.toml (TOML, or JSON by .json extension)"
    )
    p.add_argument("-i", "--initdata-digest", dest="initdata_digest", help="initdata digest, standard base64")
    p.add_argument(
        "-t", "--initdata-toml", dest="initdata_toml", help="initdata TOML file (digest and KBS init-data)"
    )
    p.add_argument(
        "--log-level", dest="log_level", choices=sorted(_LEVELS), help="overrides RUST_LOG and [log]"
    )
    p.add_argument(
        "--log-format",
        choices=("json", "plain"),
        default="json",
        help="JSON lines (default) or readable key=value lines with the same fields",
    )
    add_version(p)
    return p


def _rust_log_level(value: str | None) -> str | None:
    """The level in ``RUST_LOG`` (``info``, ``attestation_agent=debug,info``, ...)."""
    if not value:
        return None
    for part in reversed(value.split(",")):
        level = part.rpartition("=")[2].strip().lower()
        if level in _LEVELS:
            return level
    return None


def _setup_logging(args: argparse.Namespace, config: AaConfig | None) -> None:
    level = args.log_level or _rust_log_level(os.environ.get("RUST_LOG"))
    if level is None and config is not None and config.log_level:
        level = config.log_level.lower()
    setup_logging(
        logging.getLevelName(_LEVELS.get(level or "info", logging.INFO)),
        json_lines=args.log_format == "json",
    )


def _initdata_digest(args: argparse.Namespace) -> tuple[InitData | None, bytes | None]:
    if args.initdata_toml:
        data = load_initdata(args.initdata_toml)
        return data, data.digest()
    if args.initdata_digest:
        try:
            return None, b64_decode(args.initdata_digest)
        except ValueError as exc:
            raise InitDataError("--initdata-digest is not standard base64") from exc
    return None, None


async def _start(args: argparse.Namespace, config: AaConfig) -> int:
    address = parse_address(args.attestation_sock)
    primary = detect_primary(HostView())
    log.info("primary attester: %s", primary.tee)
    log.info(
        "effective settings",
        extra={
            "version": version(),
            "socket": args.attestation_sock,
            "config_file": args.config_file,
            "attester": primary.tee,
            "kbs_url": config.kbs.url if config.kbs else None,
            "kbs_cert_pinned": bool(config.kbs and config.kbs.cert),
            "tee_key_algorithm": config.kbs.tee_key_algorithm if config.kbs else None,
            "coco_as_url": config.coco_as.url if config.coco_as else None,
            "eventlog": config.eventlog.enable_eventlog,
            "initdata": bool(args.initdata_toml or args.initdata_digest),
            "unknown_config_keys": list(config.unknown_keys),
        },
    )
    init_data, digest = _initdata_digest(args)
    agent = AttestationAgent(config, primary, init_data=init_data)
    if digest is not None:  # a mismatch raises and aborts the start
        await agent.bind_init_data(digest)
    if config.eventlog.enable_eventlog:
        try:
            agent.measurer = open_measurer(
                primary.tee, init_pcr=config.eventlog.init_pcr, path=eventlog_path()
            )
        except UnsupportedPlatform as exc:
            log.warning("event log enabled but unavailable: %s", exc)
    service = ttrpc_service(agent) if address.kind == "unix" else grpc_service(agent)

    async def ready() -> None:
        log.info("serving attestation_agent.AttestationAgentService on %s", address)

    await serve(str(address), [service], on_ready=ready)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config: AaConfig | None = None
    _setup_logging(args, None)
    try:
        config = resolve_config(args.config_file)
        _setup_logging(args, config)
        return asyncio.run(_start(args, config))
    except (AaConfigError, InitDataError, InitDataBindError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except (AaError, AttestationError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def main() -> None:
    sys.exit(run())
