"""registries.d: where simple signatures live (lookaside) and whether to use sigstore attachments.

Format (``containers-registries.d(5)``): a directory of ``*.yaml`` files merged
together, each with ``default-docker: {section}`` and/or
``docker: {"<scope>": {section}}``; a scope may be defined in only one file, and
``default-docker`` at most once. Section fields: ``lookaside`` (read URL),
``lookaside-staging`` (write URL, ignored here), their deprecated aliases
``sigstore`` / ``sigstore-staging``, and ``use-sigstore-attachments``.

Scope lookup, as containers/image's code does it: the most specific of
``host[:port]/ns/repo:tag``, ``host[:port]/ns/repo``, ..., ``host[:port]`` that
*sets the field* wins, then ``default-docker``. There is no built-in default
lookaside (containers/image falls back to ``file:///var/lib/containers/sigstore``):
without configuration, no lookaside signatures are read.

Parsing is strict: duplicate keys, unknown fields and wrong types are errors.
CDH's ``sigstore_config`` (image-rs) uses the same YAML and is merged in as one
more file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coco_common.files import FileTooLarge, read_bounded
from image_pull.reference import Reference
from image_pull.trust.errors import InvalidPolicy
from image_pull.trust.policy import docker_scopes

__all__ = ["MAX_REGISTRIES_D_BYTES", "RegistriesD", "Section"]

MAX_REGISTRIES_D_BYTES = 1 << 20
MAX_FILES = 256


@dataclass(frozen=True)
class Section:
    lookaside: str | None = None
    use_sigstore_attachments: bool | None = None


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k_node, v_node in node.value:
        k = loader.construct_object(k_node, deep=True)
        if k in out:
            raise InvalidPolicy(f"registries.d: duplicate key {str(k)[:60]!r}")
        out[k] = loader.construct_object(v_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _section(v: Any, what: str) -> Section:
    if v is None:
        return Section()
    if not isinstance(v, dict):
        raise InvalidPolicy(f"{what} must be a mapping")
    allowed = {"lookaside", "lookaside-staging", "sigstore", "sigstore-staging", "use-sigstore-attachments"}
    unknown = set(v) - allowed
    if unknown:
        raise InvalidPolicy(f"{what}: unknown field {str(sorted(map(str, unknown))[0])[:40]!r}")
    if "lookaside" in v and "sigstore" in v:
        raise InvalidPolicy(f"{what}: both lookaside and its deprecated alias sigstore are set")
    url = v.get("lookaside", v.get("sigstore"))
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("file://", "http://", "https://"))
    ):
        raise InvalidPolicy(f"{what}: lookaside must be a file://, http:// or https:// URL")
    for k in ("lookaside-staging", "sigstore-staging"):
        if k in v and not isinstance(v[k], str):
            raise InvalidPolicy(f"{what}: {k} must be a string")
    use = v.get("use-sigstore-attachments")
    if use is not None and not isinstance(use, bool):
        raise InvalidPolicy(f"{what}: use-sigstore-attachments must be a boolean")
    return Section(url, use)


@dataclass(frozen=True)
class RegistriesD:
    default: Section | None = None
    docker: Mapping[str, Section] | None = None

    @classmethod
    def from_yaml(cls, untrusted: bytes, what: str = "registries.d") -> RegistriesD:
        if len(untrusted) > MAX_REGISTRIES_D_BYTES:
            raise InvalidPolicy(f"{what} is larger than 1 MiB")
        try:
            doc = yaml.load(untrusted.decode("utf-8"), Loader=_StrictLoader)  # noqa: S506 - safe loader subclass
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidPolicy(f"{what} is not valid YAML: {str(exc)[:80]}") from exc
        if doc is None:
            return cls()
        if not isinstance(doc, dict) or set(doc) - {"default-docker", "docker"}:
            raise InvalidPolicy(f"{what}: only default-docker and docker are allowed at the top level")
        default = (
            _section(doc["default-docker"], f"{what}: default-docker") if "default-docker" in doc else None
        )
        docker: dict[str, Section] = {}
        d = doc.get("docker")
        if d is not None:
            if not isinstance(d, dict):
                raise InvalidPolicy(f"{what}: docker must be a mapping of scopes")
            for scope, sec in d.items():
                if not isinstance(scope, str):
                    raise InvalidPolicy(f"{what}: docker scopes must be strings")
                docker[scope] = _section(sec, f"{what}: docker[{scope[:60]!r}]")
        return cls(default, docker)

    @classmethod
    def merge(cls, parts: Sequence[tuple[str, RegistriesD]]) -> RegistriesD:
        default: Section | None = None
        docker: dict[str, Section] = {}
        seen: dict[str, str] = {}
        default_from = ""
        for name, p in parts:
            if p.default is not None:
                if default is not None:
                    raise InvalidPolicy(f"default-docker is defined in both {default_from} and {name}")
                default, default_from = p.default, name
            for scope, sec in (p.docker or {}).items():
                if scope in docker:
                    raise InvalidPolicy(
                        f"registries.d scope {scope[:60]!r} defined in {seen[scope]} and {name}"
                    )
                docker[scope], seen[scope] = sec, name
        return cls(default, docker)

    @classmethod
    def load(cls, directory: Path | None = None, extra_yaml: bytes | None = None) -> RegistriesD:
        """Merge ``directory/*.yaml`` (sorted) and an inline YAML (CDH ``sigstore_config``)."""
        parts: list[tuple[str, RegistriesD]] = []
        if directory is not None:
            try:
                files = sorted(p for p in Path(directory).iterdir() if p.suffix == ".yaml" and p.is_file())
            except OSError as exc:
                raise InvalidPolicy(f"cannot read registries.d {directory}: {exc.strerror}") from exc
            for f in files[:MAX_FILES]:
                try:
                    data = read_bounded(f, MAX_REGISTRIES_D_BYTES)
                except FileTooLarge as exc:
                    raise InvalidPolicy(f"{f.name} is larger than 1 MiB") from exc
                except (OSError, ValueError) as exc:
                    raise InvalidPolicy(f"cannot read {f}: {getattr(exc, 'strerror', None) or exc}") from exc
                parts.append((f.name, cls.from_yaml(data, f.name)))
        if extra_yaml is not None:
            parts.append(("sigstore_config", cls.from_yaml(extra_yaml, "sigstore_config")))
        return cls.merge(parts)

    def _lookup(self, ref: Reference, field: str) -> Any:
        for scope in docker_scopes(ref):
            if scope.startswith("*.") or scope == "":
                continue
            sec = (self.docker or {}).get(scope)
            if sec is not None and getattr(sec, field) is not None:
                return getattr(sec, field)
        if self.default is not None:
            return getattr(self.default, field)
        return None

    def lookaside_for(self, ref: Reference) -> str | None:
        v = self._lookup(ref, "lookaside")
        return v if isinstance(v, str) else None

    def use_sigstore_attachments(self, ref: Reference) -> bool | None:
        v = self._lookup(ref, "use_sigstore_attachments")
        return v if isinstance(v, bool) else None
