"""OCI / Docker schema2 manifests, indexes and image configs, parsed strictly.

Parsing rejects duplicate JSON keys, NaN/Infinity, wrong types, bad digests,
negative sizes, ambiguous documents (an index with ``layers``/``config`` or a
manifest with ``manifests``: CVE-2021-41190) and a ``mediaType`` field that
contradicts the Content-Type the registry sent. Unknown *extra* fields are
ignored, as the image spec requires of consumers.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coco_common.strict_json import strict_loads
from image_pull.errors import InvalidReference, ManifestError, NoMatchingPlatform
from image_pull.reference import parse_digest

__all__ = [
    "CONFIG_TYPES",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "layer_compression",
    "parse_config",
    "parse_manifest_document",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX])
CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)

# layer media type -> (compression, encrypted)
LAYER_TYPES: Mapping[str, tuple[str, bool]] = {
    "application/vnd.oci.image.layer.v1.tar": ("none", False),
    "application/vnd.oci.image.layer.v1.tar+gzip": ("gzip", False),
    "application/vnd.oci.image.layer.v1.tar+zstd": ("zstd", False),
    "application/vnd.oci.image.layer.nondistributable.v1.tar": ("none", False),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": ("gzip", False),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ("zstd", False),
    "application/vnd.docker.image.rootfs.diff.tar.gzip": ("gzip", False),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": ("gzip", False),
    "application/vnd.oci.image.layer.v1.tar+encrypted": ("none", True),
    "application/vnd.oci.image.layer.v1.tar+gzip+encrypted": ("gzip", True),
    "application/vnd.oci.image.layer.v1.tar+zstd+encrypted": ("zstd", True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+encrypted": ("none", True),
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted": ("gzip", True),
}

MAX_LAYERS = 512


def _get(
    obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], what: str, required: bool = True
) -> Any:
    if key not in obj:
        if required:
            raise ManifestError(f"{what}: missing field {key!r}")
        return None
    v = obj[key]
    if isinstance(v, bool) and typ is int:
        raise ManifestError(f"{what}: field {key!r} has the wrong type")
    if not isinstance(v, typ):
        raise ManifestError(f"{what}: field {key!r} has the wrong type")
    return v


def _str_map(v: Any, what: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) and isinstance(y, str) for x, y in v.items()):
        raise ManifestError(f"{what}: annotations must map strings to strings")
    return dict(v)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def host(cls) -> Platform:
        m = _platform.machine().lower()
        arch, variant = {
            "x86_64": ("amd64", None),
            "amd64": ("amd64", None),
            "aarch64": ("arm64", "v8"),
            "arm64": ("arm64", "v8"),
            "s390x": ("s390x", None),
            "ppc64le": ("ppc64le", None),
            "armv7l": ("arm", "v7"),
            "riscv64": ("riscv64", None),
        }.get(m, (m, None))
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"invalid platform {text[:40]!r} (want os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, other: Platform) -> bool:
        if self.os != other.os or self.architecture != other.architecture:
            return False
        if self.variant is None:
            return True
        default_variant = "v8" if self.architecture == "arm64" else None
        return (other.variant or default_variant) == self.variant

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @property
    def encrypted(self) -> bool:
        """An ocicrypt-encrypted layer (media type ``...+encrypted``)."""
        return self.media_type.endswith("+encrypted")

    @classmethod
    def from_json(cls, untrusted: Any, what: str) -> Descriptor:
        if not isinstance(untrusted, dict):
            raise ManifestError(f"{what}: descriptor is not an object")
        mt = _get(untrusted, "mediaType", str, what)
        try:
            digest = parse_digest(_get(untrusted, "digest", str, what))
        except InvalidReference as exc:
            raise ManifestError(f"{what}: {exc}") from exc
        size = _get(untrusted, "size", int, what)
        if size < 0:
            raise ManifestError(f"{what}: negative size")
        urls = _get(untrusted, "urls", list, what, required=False) or []
        if not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{what}: urls must be strings")
        ann = _str_map(untrusted.get("annotations"), what)
        plat = None
        p = untrusted.get("platform")
        if p is not None:
            if not isinstance(p, dict):
                raise ManifestError(f"{what}: platform is not an object")
            plat = Platform(
                _get(p, "os", str, what),
                _get(p, "architecture", str, what),
                _get(p, "variant", str, what, required=False),
            )
        return cls(mt, digest, size, tuple(urls), ann, plat)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]

    def select(self, want: Platform) -> Descriptor:
        """First entry for ``want`` (image manifests only; attestation entries skipped)."""
        seen: list[str] = []
        for d in self.manifests:
            if d.media_type not in MANIFEST_TYPES and d.media_type not in INDEX_TYPES:
                continue
            if d.platform is None:
                continue
            seen.append(str(d.platform))
            if want.matches(d.platform):
                return d
        have = ", ".join(sorted(set(seen))[:8]) or "none"
        raise NoMatchingPlatform(f"image index has no manifest for {want} (has: {have})")


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest_document(untrusted_body: bytes, content_type: str | None) -> Manifest | Index:
    """Parse a manifest or index body (already digest-checked by the caller)."""
    doc = strict_loads(untrusted_body, error=ManifestError, what="manifest")
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if _get(doc, "schemaVersion", int, "manifest") != 2:
        raise ManifestError("unsupported manifest schemaVersion (only 2 is supported)")
    body_type = _get(doc, "mediaType", str, "manifest", required=False)
    header_type = _media_type(content_type)
    generic = ("application/json", "application/octet-stream", "text/plain")
    if (
        body_type is not None
        and header_type is not None
        and body_type != header_type
        and header_type not in generic
    ):
        raise ManifestError("manifest mediaType differs from the registry's Content-Type")
    mt = body_type or header_type
    has_manifests = "manifests" in doc
    has_layers = "layers" in doc or "config" in doc
    if has_manifests and has_layers:
        raise ManifestError("ambiguous document: both manifests and layers/config")
    if mt is None or mt in ("application/json", "application/octet-stream"):
        mt = OCI_INDEX if has_manifests else OCI_MANIFEST
    if mt in INDEX_TYPES:
        if has_layers:
            raise ManifestError("image index contains layers or config")
        entries = _get(doc, "manifests", list, "index")
        if len(entries) > 4096:
            raise ManifestError("image index has too many entries")
        return Index(mt, tuple(Descriptor.from_json(e, "index entry") for e in entries))
    if mt in MANIFEST_TYPES:
        if has_manifests:
            raise ManifestError("image manifest contains manifests")
        config = Descriptor.from_json(_get(doc, "config", dict, "manifest"), "manifest config")
        raw_layers = _get(doc, "layers", list, "manifest")
        if len(raw_layers) > MAX_LAYERS:
            raise ManifestError(f"manifest has more than {MAX_LAYERS} layers")
        layers = tuple(Descriptor.from_json(x, "manifest layer") for x in raw_layers)
        return Manifest(mt, config, layers, _str_map(doc.get("annotations"), "manifest"))
    if "prettyjws" in mt or mt.endswith("manifest.v1+json"):
        raise ManifestError("Docker schema1 manifests are not supported")
    raise ManifestError(f"unsupported manifest media type {mt[:80]!r}")


def layer_compression(media_type: str) -> tuple[str, bool]:
    """(compression, encrypted) for a layer media type; ManifestError if unknown."""
    try:
        return LAYER_TYPES[media_type]
    except KeyError as exc:
        raise ManifestError(f"unsupported layer media type {media_type[:80]!r}") from exc


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config the puller and the bundle need."""

    os: str
    architecture: str
    variant: str | None
    diff_ids: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    working_dir: str
    user: str
    volumes: tuple[str, ...]
    labels: Mapping[str, str]
    stop_signal: str | None
    exposed_ports: tuple[str, ...]
    author: str | None
    created: str | None


def _str_list(v: Any, what: str) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ManifestError(f"image config: {what} must be a list of strings")
    return tuple(v)


def _keys(v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise ManifestError(f"image config: {what} must be an object")
    return tuple(sorted(v))


def parse_config(untrusted_body: bytes) -> ImageConfig:
    doc = strict_loads(untrusted_body, error=ManifestError, what="image config")
    if not isinstance(doc, dict):
        raise ManifestError("image config is not a JSON object")
    rootfs = _get(doc, "rootfs", dict, "image config")
    if _get(rootfs, "type", str, "image config rootfs") != "layers":
        raise ManifestError("image config rootfs.type must be 'layers'")
    diff_ids = _str_list(_get(rootfs, "diff_ids", list, "image config rootfs"), "diff_ids") or ()
    try:
        for d in diff_ids:
            parse_digest(d)
    except InvalidReference as exc:
        raise ManifestError(f"image config diff_ids: {exc}") from exc
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise ManifestError("image config: config must be an object")

    def opt_str(obj: Mapping[str, Any], key: str) -> str | None:
        v = obj.get(key)
        if v is not None and not isinstance(v, str):
            raise ManifestError(f"image config: {key} must be a string")
        return v

    labels = cfg.get("Labels") or {}
    return ImageConfig(
        os=opt_str(doc, "os") or "linux",
        architecture=opt_str(doc, "architecture") or "",
        variant=opt_str(doc, "variant"),
        diff_ids=diff_ids,
        entrypoint=_str_list(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(cfg.get("Cmd"), "Cmd"),
        env=_str_list(cfg.get("Env"), "Env") or (),
        working_dir=opt_str(cfg, "WorkingDir") or "",
        user=opt_str(cfg, "User") or "",
        volumes=_keys(cfg.get("Volumes"), "Volumes"),
        labels=_str_map(labels, "image config Labels"),
        stop_signal=opt_str(cfg, "StopSignal"),
        exposed_ports=_keys(cfg.get("ExposedPorts"), "ExposedPorts"),
        author=opt_str(doc, "author"),
        created=opt_str(doc, "created"),
    )
