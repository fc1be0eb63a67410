"""Structured logging for the KBS: JSON lines, or ``--plain-logs`` (same fields as key=value)."""

from __future__ import annotations

import logging

from coco_common import logfmt
from coco_common.logfmt import JsonFormatter, PlainFormatter

__all__ = ["JsonFormatter", "PlainFormatter", "setup_logging"]


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    logfmt.setup_logging(level, json_lines=json_lines)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
