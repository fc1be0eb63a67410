"""Docker image references: parsing and normalisation.

``busybox`` -> ``docker.io/library/busybox:latest``. A first path component is a
registry host only if it contains ``.`` or ``:`` or is ``localhost``;
``index.docker.io`` is an alias of ``docker.io``, whose API endpoint is
``registry-1.docker.io`` (containers/image ``docker/reference/normalize.go``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from image_pull.errors import InvalidReference

__all__ = [
    "DEFAULT_TAG",
    "DOCKER_HUB",
    "DOCKER_HUB_ENDPOINT",
    "Reference",
    "is_short_name",
    "join_reference",
    "normalize_registry",
    "parse_digest",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_REFERENCE_LENGTH = 4096
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def parse_digest(untrusted: str) -> str:
    """Validate ``algorithm:hex`` (sha256/sha512, lowercase hex) and return it."""
    m = _DIGEST_RE.fullmatch(untrusted)
    if m is None:
        raise InvalidReference(f"invalid digest {untrusted[:80]!r}")
    algo, enc = m.group(1), m.group(2)
    want = _DIGEST_HEX.get(algo)
    if want is None:
        raise InvalidReference(f"unsupported digest algorithm {algo[:20]!r}")
    if len(enc) != want or not re.fullmatch(r"[a-f0-9]+", enc):
        raise InvalidReference(f"invalid {algo} digest (need {want} lowercase hex digits)")
    return untrusted


def normalize_registry(host: str) -> str:
    """Map Docker Hub aliases onto ``docker.io``; other hosts are lowercased."""
    h = host.lower()
    return DOCKER_HUB if h in _HUB_ALIASES else h


@dataclass(frozen=True)
class Reference:
    """A fully normalised image reference.

    ``registry`` is the normalised host[:port] (``docker.io`` for Docker Hub),
    ``repository`` the path (``library/busybox``), and at least one of ``tag``
    and ``digest`` is set (``tag`` defaults to ``latest`` when neither is given).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def endpoint(self) -> str:
        """host[:port] to talk HTTP to."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest if any, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, parse_digest(digest))

    def with_registry(self, registry: str, repository: str | None = None) -> Reference:
        return Reference(normalize_registry(registry), repository or self.repository, self.tag, self.digest)

    def __str__(self) -> str:
        return join_reference(self.name, self.tag, self.digest)


def join_reference(name: str, tag: str | None, digest: str | None) -> str:
    """``name[:tag][@digest]``."""
    return name + (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest is not None else "")


def _split_host(untrusted: str) -> tuple[str | None, str]:
    first, sep, rest = untrusted.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, rest
    return None, untrusted


def is_short_name(untrusted_ref: str) -> bool:
    """Whether the reference names no registry (``busybox``, ``ns/app:1``): only such
    names go through registries.conf unqualified-search-registries."""
    rest = untrusted_ref.removeprefix("docker://").partition("@")[0]
    return _split_host(rest)[0] is None


def parse_reference(untrusted_ref: str, *, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse and normalise a docker reference (``[host[:port]/]path[:tag][@digest]``)."""
    if not untrusted_ref or len(untrusted_ref) > MAX_REFERENCE_LENGTH:
        raise InvalidReference("empty or overlong image reference")
    if untrusted_ref != untrusted_ref.strip() or any(c in untrusted_ref for c in " \t\r\n\0"):
        raise InvalidReference("image reference contains whitespace or control characters")
    rest = untrusted_ref
    for scheme in ("docker://",):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
    digest: str | None = None
    if "@" in rest:
        rest, _, d = rest.partition("@")
        digest = parse_digest(d)
    host, path = _split_host(rest)
    tag: str | None = None
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag[:40]!r}")
    if host is None:
        registry = default_registry
    else:
        if not _HOST_RE.fullmatch(host):
            raise InvalidReference(f"invalid registry host {host[:80]!r}")
        registry = normalize_registry(host)
    if not _NAME_RE.fullmatch(path):
        raise InvalidReference(
            f"invalid repository name {path[:80]!r} (lowercase letters, digits, separators . _ __ -)"
        )
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference("repository name longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
