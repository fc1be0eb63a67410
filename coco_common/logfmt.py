"""One log format family for every daemon: JSON lines (the default for
daemons) and a plain form that keeps the same fields (``key=value``)."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "PlainFormatter", "setup_logging"]

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", <extra fields>}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {"ts": _ts(record), "level": record.levelname, "logger": record.name}
        doc["msg"] = record.getMessage()
        doc.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc"] = record.exc_info[0].__name__
        return json.dumps(doc, default=str)


class PlainFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <msg> key=value ...``: readable, and no field is dropped."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record)} {record.levelname} {record.name}: {record.getMessage()}"
        for k, v in _fields(record).items():
            text = (
                v
                if isinstance(v, str) and v and " " not in v and '"' not in v
                else json.dumps(v, default=str)
            )
            line += f" {k}={text}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" exc={record.exc_info[0].__name__}"
        return line


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Route the root logger to stderr in one of the two forms, at ``level``."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    h._coco_logfmt = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # replace only what an earlier call installed (handlers of a host, e.g. pytest's, stay)
    root.handlers[:] = [x for x in root.handlers if not getattr(x, "_coco_logfmt", False)] + [h]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
