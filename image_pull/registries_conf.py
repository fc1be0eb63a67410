"""containers-registries.conf (v2) subset, as image-rs reads it.

TOML::

    unqualified-search-registries = ["docker.io", "quay.io"]
    [[registry]]
    prefix = "example.com/foo"       # defaults to location
    location = "mirror.internal/foo" # remap target
    insecure = false                 # plain HTTP for this location
    blocked = false
    [[registry.mirror]]
    location = "mirror1.internal/foo"
    insecure = true

Ordering (image-rs ``RegistryHandler::process``): a docker.io reference
(explicit or unqualified: normalisation makes them the same) expands into one
candidate per unqualified-search registry (``library/`` dropped for
non-docker.io entries); each candidate is matched against the longest
``[[registry]]`` prefix (a match must end at ``/``, ``:``, ``@`` or the end;
``*.domain`` prefixes match hosts). Blocked -> dropped; otherwise its mirrors
in order, then the (remapped) location. All dropped -> PolicyRejected.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from image_pull.errors import InvalidReference, PolicyRejected
from image_pull.reference import DOCKER_HUB, Reference, join_reference, parse_reference

__all__ = ["Candidate", "Mirror", "ProxyConfig", "RegistryConfig", "RegistryRule"]

MAX_CONFIG = 1 << 20


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False


@dataclass(frozen=True)
class RegistryRule:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One place to try: a (possibly rewritten) reference and whether plain HTTP is allowed."""

    reference: Reference
    insecure: bool
    origin: str  # "original", "mirror", "remapped", "search"


def _bool(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise PolicyRejected(f"registries.conf: {what} must be true or false")
    return v


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise PolicyRejected(f"registries.conf: {what} must be a string")
    return v


def _redact_userinfo(url: str | None) -> str | None:
    if url is None or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}" if sep else "***"


@dataclass(frozen=True, repr=False)
class ProxyConfig:
    """HTTP(S) proxies for registry traffic. ``no_proxy`` entries: ``host``, ``host:port``,
    ``.domain``/``*.domain``/``domain`` (the domain and its subdomains), ``*`` (no proxy at all).
    CIDR ranges are not supported. The environment is never consulted
    (:func:`image_pull.registry.http_client` turns this into transports)."""

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_list(cls, https_proxy: str | None, http_proxy: str | None, no_proxy: str | None) -> ProxyConfig:
        """From the comma-separated ``no_proxy`` form (environment-variable style)."""
        entries = tuple(x.strip() for x in (no_proxy or "").split(",") if x.strip())
        return cls(https_proxy=https_proxy or None, http_proxy=http_proxy or None, no_proxy=entries)

    def __repr__(self) -> str:  # proxy URLs may carry user:password
        return (
            f"ProxyConfig(https_proxy={_redact_userinfo(self.https_proxy)!r}, "
            f"http_proxy={_redact_userinfo(self.http_proxy)!r}, no_proxy={self.no_proxy!r})"
        )


@dataclass(frozen=True)
class RegistryConfig:
    unqualified_search_registries: tuple[str, ...] = (DOCKER_HUB,)
    registries: tuple[RegistryRule, ...] = field(default_factory=tuple)

    def insecure_hosts(self) -> frozenset[str]:
        """``host[:port]`` of every location and mirror marked ``insecure`` (plain HTTP allowed)."""
        places = [
            r.location or r.prefix for r in self.registries if r.insecure
        ]  # location defaults to prefix
        places += [m.location for r in self.registries for m in r.mirrors if m.insecure]
        return frozenset(p.split("/", 1)[0] for p in places if not p.startswith("*."))

    @classmethod
    def from_toml(cls, untrusted: bytes) -> RegistryConfig:
        if len(untrusted) > MAX_CONFIG:
            raise PolicyRejected("registries.conf is larger than 1 MiB")
        try:
            doc = tomllib.loads(untrusted.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyRejected(f"registries.conf is not valid TOML: {str(exc)[:80]}") from exc
        return cls.from_mapping(doc)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> RegistryConfig:
        """The same rules from an already parsed table (e.g. CDH's inline
        ``[image.registry_config]``)."""
        unknown = set(doc) - {"unqualified-search-registries", "registry", "short-name-mode"}
        if unknown:
            raise PolicyRejected(f"registries.conf: unsupported keys {sorted(unknown)[:5]}")
        search = doc.get("unqualified-search-registries", [DOCKER_HUB])
        if not isinstance(search, list):
            raise PolicyRejected("registries.conf: unqualified-search-registries must be a list")
        rules: list[RegistryRule] = []
        for i, r in enumerate(doc.get("registry", [])):
            if not isinstance(r, dict):
                raise PolicyRejected("registries.conf: [[registry]] entries must be tables")
            bad = set(r) - {"prefix", "location", "insecure", "blocked", "mirror", "mirror-by-digest-only"}
            if bad:
                raise PolicyRejected(f"registries.conf: registry #{i}: unsupported keys {sorted(bad)[:5]}")
            location = _str(r.get("location", ""), "location")
            prefix = _str(r.get("prefix", ""), "prefix") or location
            if not prefix:
                raise PolicyRejected(f"registries.conf: registry #{i} needs a prefix or a location")
            if prefix.startswith("*.") and not location:
                raise PolicyRejected(f"registries.conf: wildcard prefix {prefix!r} needs a location")
            mirrors = []
            for m in r.get("mirror", []):
                if not isinstance(m, dict):
                    raise PolicyRejected("registries.conf: [[registry.mirror]] entries must be tables")
                loc = _str(m.get("location", ""), "mirror location")
                if not loc:
                    raise PolicyRejected("registries.conf: a mirror needs a location")
                mirrors.append(Mirror(loc, _bool(m.get("insecure", False), "mirror insecure")))
            rules.append(
                RegistryRule(
                    prefix=prefix,
                    location=location,
                    insecure=_bool(r.get("insecure", False), "insecure"),
                    blocked=_bool(r.get("blocked", False), "blocked"),
                    mirrors=tuple(mirrors),
                )
            )
        return cls(tuple(_str(s, "search registry") for s in search), tuple(rules))

    # ------------------------------------------------------------------ matching
    @staticmethod
    def _matches(prefix: str, name: str) -> bool:
        if prefix.startswith("*."):
            host = name.split("/", 1)[0].split(":", 1)[0]
            return host.endswith(prefix[1:])
        if not name.startswith(prefix):
            return False
        return len(name) == len(prefix) or name[len(prefix)] in "/:@"

    def _rule_for(self, name: str) -> RegistryRule | None:
        best: RegistryRule | None = None
        for r in self.registries:
            if self._matches(r.prefix, name) and (best is None or len(r.prefix) > len(best.prefix)):
                best = r
        return best

    @staticmethod
    def _rewrite(ref: Reference, prefix: str, location: str) -> Reference:
        full = str(ref)
        if prefix.startswith("*."):
            host = ref.registry
            new = location + full[len(host) :]
        else:
            new = location + full[len(prefix) :]
        try:
            return parse_reference(new)
        except InvalidReference as exc:
            raise PolicyRejected(
                f"registries.conf rewrites the reference to an invalid one: {new[:80]!r}"
            ) from exc

    def candidates(self, ref: Reference, *, unqualified: bool = False) -> list[Candidate]:
        """Ordered places to pull ``ref`` from.

        ``unqualified``: the caller's reference was a short name (see
        :func:`~image_pull.reference.is_short_name`); only then are the search
        registries tried. A reference naming ``docker.io`` is never sent elsewhere.
        """
        starts: list[tuple[Reference, str]] = []
        if unqualified and self.unqualified_search_registries:
            for reg in self.unqualified_search_registries:
                repo = ref.repository
                if reg != DOCKER_HUB and repo.startswith("library/"):
                    repo = repo[len("library/") :]
                try:
                    starts.append(
                        (parse_reference(join_reference(f"{reg}/{repo}", ref.tag, ref.digest)), "search")
                    )
                except InvalidReference:
                    continue
        else:
            starts.append((ref, "original"))
        out: list[Candidate] = []
        for start, origin in starts:
            rule = self._rule_for(str(start))
            if rule is None:
                out.append(Candidate(start, False, origin))
                continue
            if rule.blocked:
                continue
            for m in rule.mirrors:
                out.append(Candidate(self._rewrite(start, rule.prefix, m.location), m.insecure, "mirror"))
            if rule.location:
                out.append(
                    Candidate(self._rewrite(start, rule.prefix, rule.location), rule.insecure, "remapped")
                )
            else:
                out.append(Candidate(start, rule.insecure, origin))
        if not out:
            raise PolicyRejected(f"image {ref} is blocked by a registries.conf rule")
        return out
