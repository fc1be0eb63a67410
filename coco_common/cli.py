"""What every console script shares: ``--version``, a validated
``--log-level``, ``RUST_LOG``, and a quiet exit when stdout is a closed pipe."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import NoReturn

from coco_common import __version__

__all__ = [
    "LOG_LEVELS",
    "add_log_options",
    "add_version",
    "closest",
    "configure_logging",
    "exit_on_closed_pipe",
    "log_level_type",
    "rust_log_level",
    "version",
]

#: the accepted ``--log-level`` values (upstream's tracing levels; ``warning`` as an alias)
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical", "off")
_TO_PYTHON = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "off": "CRITICAL",
}


def version() -> str:
    """The coco-py version (``coco_common.__version__``, which the wheel's metadata is
    built from): no ``importlib.metadata`` at start-up, which costs a daemon ~2 MiB
    and ~30 ms (email, zipfile, csv)."""
    return __version__


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: prints ``<prog> <version>`` and exits 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()} (coco-py)")


def log_level_type(value: str) -> str:
    """An argparse ``type=`` for ``--log-level``: one of :data:`LOG_LEVELS` (any case),
    returned as the Python logging level name."""
    v = value.strip().lower()
    if v not in _TO_PYTHON:
        raise argparse.ArgumentTypeError(f"invalid level {value!r} (choose from {', '.join(LOG_LEVELS)})")
    return _TO_PYTHON[v]


def rust_log_level(env: str | None = None) -> str | None:
    """The global level of ``RUST_LOG`` (``debug``, ``info,hyper=warn``, ...) as a Python
    level name, or None when it is unset or names only per-module levels."""
    raw = os.environ.get("RUST_LOG", "") if env is None else env
    for part in raw.split(","):
        part = part.strip().lower()
        if part and "=" not in part and part in _TO_PYTHON:
            return _TO_PYTHON[part]
    return None


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``word`` (for "did you mean ..."), or None."""
    import difflib  # only on a typo: not on every daemon's start-up path

    hits = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return hits[0] if hits else None


def exit_on_closed_pipe() -> NoReturn:
    """Call from ``except BrokenPipeError``: stdout's reader went away (``| head``).
    Exits quietly (status 141 like a shell's SIGPIPE), without a traceback or a
    second error when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(141)


def add_log_options(parser: argparse.ArgumentParser, *, default_format: str = "json") -> None:
    """``--log-level`` (validated; default: the level in ``RUST_LOG``, else info) and
    ``--log-format json|plain`` (the same fields either way)."""
    parser.add_argument(
        "--log-level",
        type=log_level_type,
        help=f"one of {', '.join(LOG_LEVELS)} (default: the level in $RUST_LOG, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "plain"),
        default=default_format,
        help=f"JSON lines or readable key=value lines with the same fields (default: {default_format})",
    )


def configure_logging(args: argparse.Namespace, *, default_level: str = "INFO") -> None:
    """Apply :func:`add_log_options`' flags: ``--log-level`` > ``RUST_LOG`` > ``default_level``."""
    from coco_common.logfmt import setup_logging

    level = getattr(args, "log_level", None) or rust_log_level() or default_level
    setup_logging(level, json_lines=getattr(args, "log_format", "json") == "json")
