"""Parsing of socket addresses as guest-components writes them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Address", "parse_address"]


@dataclass(frozen=True)
class Address:
    """``kind`` is ``"unix"`` (``target`` is a filesystem path) or ``"tcp"``
    (``target`` is ``host:port``)."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"unix://{self.target}" if self.kind == "unix" else self.target


def parse_address(text: str) -> Address:
    """Accept ``unix:///abs/path``, ``unix:/abs/path``, a bare absolute path,
    ``tcp://host:port`` or ``host:port``."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://") :]
    elif text.startswith("unix:"):
        path = text[len("unix:") :]
    elif text.startswith("/"):
        path = text
    else:
        target = text.removeprefix("tcp://").removeprefix("http://")
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"not a socket address: {text!r} (want unix:///path or host:port)")
        return Address("tcp", target)
    if not path.startswith("/"):
        raise ValueError(f"unix socket path must be absolute: {text!r}")
    return Address("unix", path)
