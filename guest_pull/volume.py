"""``KataVirtualVolume``: what nydus-snapshotter (proxy mode) puts in a rootfs
mount option ``io.katacontainers.volume=<std base64 of JSON>``
(``kata:src/runtime/virtcontainers/types/virtual_volume.go``).

Parsing is strict: unknown keys, duplicate keys and wrong types are errors
naming the field; ``volume_type`` must be one of Kata's types; every
sub-structure is validated as Kata's ``IsValid`` does (dm-verity hash/sizes,
non-null metadata maps, nydus config or snapshot dir).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from coco_common.strict_json import strict_object
from guest_pull.errors import VolumeError

__all__ = [
    "MAX_VOLUME_OPTION_BYTES",
    "VOLUME_OPTION_PREFIX",
    "VOLUME_TYPES",
    "DmVerityInfo",
    "KataVirtualVolume",
    "NydusImageVolume",
    "decode_volume_option",
    "encode_volume_option",
    "parse_volume",
]

VOLUME_OPTION_PREFIX = "io.katacontainers.volume="
VOLUME_TYPES = (
    "direct_block",
    "image_raw_block",
    "layer_raw_block",
    "image_nydus_block",
    "layer_nydus_block",
    "image_nydus_fs",
    "layer_nydus_fs",
    "image_guest_pull",
)
IMAGE_GUEST_PULL = "image_guest_pull"
MAX_VOLUME_OPTION_BYTES = 1 << 20
_MIN_BLOCK, _MAX_BLOCK = 1 << 9, 1 << 19


@dataclass(frozen=True)
class DmVerityInfo:
    hashtype: str
    hash: str
    blocknum: int
    blocksize: int
    hashsize: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "hashtype": self.hashtype,
            "hash": self.hash,
            "blocknum": self.blocknum,
            "blocksize": self.blocksize,
            "hashsize": self.hashsize,
            "offset": self.offset,
        }


@dataclass(frozen=True)
class NydusImageVolume:
    config: str
    snapshot_dir: str


@dataclass(frozen=True)
class KataVirtualVolume:
    volume_type: str
    source: str = ""
    fs_type: str = ""
    options: tuple[str, ...] = ()
    direct_volume: Mapping[str, str] | None = None
    image_pull: Mapping[str, str] | None = None  # the ``image_pull.metadata`` map
    nydus_image: NydusImageVolume | None = None
    dm_verity: DmVerityInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """Go's field order and ``omitempty`` rules."""
        out: dict[str, Any] = {"volume_type": self.volume_type}
        if self.source:
            out["source"] = self.source
        if self.fs_type:
            out["fs_type"] = self.fs_type
        if self.options:
            out["options"] = list(self.options)
        if self.direct_volume is not None:
            out["direct_volume"] = {"metadata": dict(sorted(self.direct_volume.items()))}
        if self.image_pull is not None:
            out["image_pull"] = {"metadata": dict(sorted(self.image_pull.items()))}
        if self.nydus_image is not None:
            out["nydus_image"] = {
                "config": self.nydus_image.config,
                "snapshot_dir": self.nydus_image.snapshot_dir,
            }
        if self.dm_verity is not None:
            out["dm_verity"] = self.dm_verity.to_json()
        return out


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise VolumeError(f"KataVirtualVolume: unknown field {where}{extra[0]}")


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise VolumeError(f"KataVirtualVolume: {where}{key} is required")
        return ""
    v = obj[key]
    if not isinstance(v, str):
        raise VolumeError(f"KataVirtualVolume: {where}{key} must be a string")
    return v


def _uint(obj: Mapping[str, Any], key: str, where: str) -> int:
    v = obj.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
        raise VolumeError(f"KataVirtualVolume: {where}{key} must be an unsigned integer")
    return v


def _metadata(value: Any, where: str) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise VolumeError(f"KataVirtualVolume: {where} must be an object")
    _check_keys(value, ("metadata",), f"{where}.")
    meta = value.get("metadata")
    if not isinstance(meta, dict):  # Kata: IsValid() requires a non-null map
        raise VolumeError(f"KataVirtualVolume: {where}.metadata must be a non-null map")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise VolumeError(f"KataVirtualVolume: {where}.metadata[{k!r}] must be a string")
    return MappingProxyType(dict(meta))


def _dm_verity(value: Any) -> DmVerityInfo:
    where = "dm_verity."
    if not isinstance(value, dict):
        raise VolumeError("KataVirtualVolume: dm_verity must be an object")
    _check_keys(value, ("hashtype", "hash", "blocknum", "blocksize", "hashsize", "offset"), where)
    d = DmVerityInfo(
        _str(value, "hashtype", where),
        _str(value, "hash", where),
        _uint(value, "blocknum", where),
        _uint(value, "blocksize", where),
        _uint(value, "hashsize", where),
        _uint(value, "offset", where),
    )
    want = {"sha256": 64, "sha1": 40}.get(d.hashtype.lower())
    if want is None:
        raise VolumeError(f"KataVirtualVolume: dm_verity.hashtype {d.hashtype!r} is not sha256 or sha1")
    try:
        bytes.fromhex(d.hash)
    except ValueError as exc:
        raise VolumeError("KataVirtualVolume: dm_verity.hash is not hex") from exc
    if len(d.hash) != want:
        raise VolumeError(f"KataVirtualVolume: dm_verity.hash must have {want} hex digits")
    if d.blocknum == 0 or d.blocknum > 0xFFFFFFFF:
        raise VolumeError("KataVirtualVolume: dm_verity.blocknum must be 1..2^32-1")
    for name, size in (("blocksize", d.blocksize), ("hashsize", d.hashsize)):
        if not _MIN_BLOCK <= size <= _MAX_BLOCK:
            raise VolumeError(f"KataVirtualVolume: dm_verity.{name} {size} is outside 512..524288")
    if d.offset % d.hashsize or d.offset < d.blocksize * d.blocknum:
        raise VolumeError("KataVirtualVolume: dm_verity.offset is not a hash-block multiple past the data")
    return d


def parse_volume(untrusted_json: bytes | str) -> KataVirtualVolume:
    """Parse and validate one KataVirtualVolume JSON document."""
    doc = strict_object(untrusted_json, error=VolumeError, what="KataVirtualVolume")
    _check_keys(
        doc,
        (
            "volume_type",
            "source",
            "fs_type",
            "options",
            "direct_volume",
            "image_pull",
            "nydus_image",
            "dm_verity",
        ),
        "",
    )
    vtype = _str(doc, "volume_type", "", required=True)
    if vtype not in VOLUME_TYPES:
        raise VolumeError(f"KataVirtualVolume: unknown volume_type {vtype!r}")
    options = doc.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise VolumeError("KataVirtualVolume: options must be a list of strings")
    direct = (
        _metadata(doc["direct_volume"], "direct_volume") if doc.get("direct_volume") is not None else None
    )
    pull = _metadata(doc["image_pull"], "image_pull") if doc.get("image_pull") is not None else None
    nydus = None
    if doc.get("nydus_image") is not None:
        ni = doc["nydus_image"]
        if not isinstance(ni, dict):
            raise VolumeError("KataVirtualVolume: nydus_image must be an object")
        _check_keys(ni, ("config", "snapshot_dir"), "nydus_image.")
        nydus = NydusImageVolume(_str(ni, "config", "nydus_image."), _str(ni, "snapshot_dir", "nydus_image."))
        if not nydus.config and not nydus.snapshot_dir:
            raise VolumeError("KataVirtualVolume: nydus_image needs config or snapshot_dir")
    verity = _dm_verity(doc["dm_verity"]) if doc.get("dm_verity") is not None else None
    if vtype == IMAGE_GUEST_PULL and pull is None:
        raise VolumeError("KataVirtualVolume: image_guest_pull needs image_pull.metadata")
    return KataVirtualVolume(
        vtype,
        _str(doc, "source", ""),
        _str(doc, "fs_type", ""),
        tuple(options),
        direct,
        pull,
        nydus,
        verity,
    )


def decode_volume_option(untrusted_option: str) -> KataVirtualVolume:
    """Decode ``io.katacontainers.volume=<base64>`` (the prefix is optional)."""
    value = untrusted_option.removeprefix(VOLUME_OPTION_PREFIX)
    if len(value) > MAX_VOLUME_OPTION_BYTES:
        raise VolumeError(f"io.katacontainers.volume: larger than {MAX_VOLUME_OPTION_BYTES} bytes")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise VolumeError("io.katacontainers.volume: not standard base64") from exc
    return parse_volume(raw)


def encode_volume_option(volume: KataVirtualVolume) -> str:
    """The mount option nydus-snapshotter would write for ``volume``."""
    from guest_pull.gojson import go_marshal

    return VOLUME_OPTION_PREFIX + base64.b64encode(go_marshal(volume.to_json()).encode()).decode()
