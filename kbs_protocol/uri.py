"""``kbs://`` resource URIs and their KBS request paths (reference §5.1).

``kbs:///repo/type/tag``            -> ``/kbs/v0/resource/repo/type/tag``
``kbs://host:8080/repo/type/tag?q`` -> ``/kbs/v0/resource/repo/type/tag?q``
``kbs+plugin:///a/b?q``             -> ``/kbs/v0/plugin/a/b?q``
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from .errors import InvalidUri

__all__ = [
    "MAX_URI_LENGTH",
    "RESOURCE_PLUGIN",
    "ResourceUri",
    "parse_resource_path",
    "parse_resource_segments",
]

RESOURCE_PLUGIN = "resource"
MAX_URI_LENGTH = 4096
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_PLUGIN = re.compile(r"[a-z0-9][a-z0-9_-]*")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
_PLUGIN_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")
_QUERY = re.compile(r"[A-Za-z0-9_.~!$&'()*+,;=:@/?%-]*")
_BUILTIN = {"auth", "attest", "resource-policy", "attestation-policy", "reference-value"}


def parse_resource_path(text: str) -> tuple[str, str, str]:
    """``repo/type/tag`` (a leading ``/`` is allowed) -> its three checked segments."""
    if len(text) > MAX_URI_LENGTH:
        raise InvalidUri("resource path too long")
    return parse_resource_segments(text.removeprefix("/").split("/"))


def parse_resource_segments(segs: Sequence[str]) -> tuple[str, str, str]:
    """The three segments ``repo``, ``type``, ``tag`` of a resource path, checked: the one
    grammar the client sends and the KBS accepts (letters, digits, ``_ - .``; no segment
    starts with ``.``, so neither ``.`` nor ``..`` can be one)."""
    if len(segs) != 3:
        raise InvalidUri(f"resource path must be repo/type/tag, got {len(segs)} segment(s)")
    for s in segs:
        if not _SEGMENT.fullmatch(s):
            raise InvalidUri(f"invalid resource path segment {s[:200]!r}")
    return segs[0], segs[1], segs[2]


@dataclass(frozen=True)
class ResourceUri:
    """A parsed, checked ``kbs[+plugin]://[host[:port]]/path[?query]``."""

    plugin: str
    path: tuple[str, ...]
    kbs_addr: str = ""
    query: str | None = None

    @classmethod
    def parse(cls, text: str) -> ResourceUri:
        """Parse a ``kbs://`` URI; a bare ``repo/type/tag`` path is accepted too."""
        if not isinstance(text, str) or len(text) > MAX_URI_LENGTH:
            raise InvalidUri("resource URI missing or too long")
        if "://" not in text:
            return cls(RESOURCE_PLUGIN, parse_resource_path(text.split("?", 1)[0]), "", _query(text))
        scheme, rest = text.split("://", 1)
        if scheme == "kbs":
            plugin = RESOURCE_PLUGIN
        elif scheme.startswith("kbs+"):
            plugin = scheme[4:]
            if not _PLUGIN.fullmatch(plugin) or plugin in _BUILTIN:
                raise InvalidUri(f"invalid plugin name {plugin!r}")
        else:
            raise InvalidUri("resource URI scheme must be kbs or kbs+<plugin>")
        if "#" in rest:
            raise InvalidUri("resource URI must not carry a fragment")
        query = _query(rest)
        rest = rest.split("?", 1)[0]
        addr, sep, path = rest.partition("/")
        if not sep:
            raise InvalidUri("resource URI has no path")
        if addr and not _HOST.fullmatch(addr):
            raise InvalidUri(f"invalid KBS address {addr!r}")
        if plugin == RESOURCE_PLUGIN:
            segs: tuple[str, ...] = parse_resource_path(path)
        else:
            segs = tuple(path.split("/"))
            if not segs or not all(_PLUGIN_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segs):
                raise InvalidUri("invalid plugin path")
        return cls(plugin, segs, addr, query)

    def kbs_path(self) -> str:
        """The request path under the KBS root, e.g. ``/kbs/v0/resource/a/b/c``."""
        p = "/kbs/v0/" + quote(self.plugin) + "/" + "/".join(quote(s, safe="") for s in self.path)
        return p + ("?" + self.query if self.query is not None else "")

    @property
    def resource_path(self) -> str:
        return "/".join(self.path)

    def __str__(self) -> str:
        scheme = "kbs" if self.plugin == RESOURCE_PLUGIN else f"kbs+{self.plugin}"
        q = "?" + self.query if self.query is not None else ""
        return f"{scheme}://{self.kbs_addr}/{self.resource_path}{q}"


def _query(text: str) -> str | None:
    if "?" not in text:
        return None
    q = text.split("?", 1)[1]
    if not _QUERY.fullmatch(q):
        raise InvalidUri("invalid characters in resource URI query")
    return q
