"""Reproducible OCI image layouts written from directory trees.

Used by ``make images`` (scripts/images.py). Everything that could vary
between two builds of the same inputs is fixed here:

* layer tarballs list their entries in byte order of the path, every entry
  has mtime ``SOURCE_DATE_EPOCH``, uid/gid 0 (or an explicit owner from the
  caller), empty user/group names and no access/change times (PAX headers
  are only the ones ``tarfile`` needs for long names, and carry no time);
* hard links inside one tree are kept as links to the first path in order;
* gzip streams have mtime 0 and no file name in the header, one fixed level;
* the config, manifest and index are canonical JSON (sorted keys, no spaces),
  the config's ``created`` and history times are ``SOURCE_DATE_EPOCH``.

Nothing here reads the clock or the environment: the caller passes the epoch.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

__all__ = [
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_LAYER_GZIP",
    "MEDIA_MANIFEST",
    "ImageSpec",
    "Layer",
    "LayoutError",
    "canonical_json",
    "write_layer",
    "write_layout",
]

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 6
_CHUNK = 1 << 20


class LayoutError(Exception):
    """A tree cannot be written as a layer (unsupported file type, bad owner map)."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _Hashing:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, inner: IO[bytes] | None) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256:<hex> of the gzip blob
    diff_id: str  # sha256:<hex> of the uncompressed tar
    size: int  # bytes of the gzip blob
    entries: int
    created_by: str


def _walk_sorted(root: Path) -> list[str]:
    """Every path under ``root`` (relative, '/'-separated), parents before children, byte order."""
    out: list[str] = []
    for cur, dirs, files in os.walk(root):
        rel = os.path.relpath(cur, root)
        for name in dirs + files:
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    # byte order of the path, so a directory precedes everything below it
    out.sort(key=lambda p: p.encode())
    return out


def write_layer(
    root: Path,
    out: Path,
    *,
    epoch: int,
    created_by: str,
    owners: Mapping[str, tuple[int, int]] | None = None,
    prefix_dirs: Sequence[str] = (),
) -> Layer:
    """Write the tree under ``root`` as a gzip layer blob at ``out``.

    ``owners``: relative path -> (uid, gid) for entries that are not root's
    (the rest are 0:0). ``prefix_dirs``: parent directories to list first even
    when ``root`` holds nothing else there (they get mode 0755, owner 0:0)."""
    owners = dict(owners or {})
    paths = _walk_sorted(root)
    unknown = sorted(set(owners) - set(paths))
    if unknown:
        raise LayoutError(f"owner given for paths not in the tree: {unknown[:3]}")
    links: dict[tuple[int, int], str] = {}
    with out.open("wb") as raw:
        blob = _Hashing(raw)
        gz_file = cast(IO[bytes], blob)
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz_file, mtime=0, compresslevel=GZIP_LEVEL) as gz:
            tar_stream = _Hashing(cast(IO[bytes], gz))
            # "w|": a plain stream, written front to back (no seeking, no tell)
            with tarfile.open(
                fileobj=cast(IO[bytes], tar_stream), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                n = 0
                for d in prefix_dirs:
                    ti = _info(d, epoch, (0, 0))
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(ti)
                    n += 1
                for rel in paths:
                    full = root / rel
                    st = os.lstat(full)
                    ti = _info(rel, epoch, owners.get(rel, (0, 0)))
                    ti.mode = stat.S_IMODE(st.st_mode)
                    if stat.S_ISDIR(st.st_mode):
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif stat.S_ISLNK(st.st_mode):
                        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
                        tar.addfile(ti)
                    elif stat.S_ISREG(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in links:
                            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
                            tar.addfile(ti)
                        else:
                            if st.st_nlink > 1:
                                links[key] = rel
                            ti.type, ti.size = tarfile.REGTYPE, st.st_size
                            with full.open("rb") as f:
                                tar.addfile(ti, f)
                    else:
                        raise LayoutError(f"{rel}: unsupported file type {stat.filemode(st.st_mode)}")
                    n += 1
    return Layer(
        digest="sha256:" + blob.sha.hexdigest(),
        diff_id="sha256:" + tar_stream.sha.hexdigest(),
        size=blob.size,
        entries=n,
        created_by=created_by,
    )


def _info(name: str, epoch: int, owner: tuple[int, int]) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = epoch
    ti.uid, ti.gid = owner
    ti.uname = ti.gname = ""
    return ti


@dataclass(frozen=True)
class ImageSpec:
    """What goes into the image config (the ``config`` object of the OCI image spec)."""

    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    user: str = ""
    working_dir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = "SIGTERM"


def _rfc3339(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    p = layout / "blobs" / "sha256" / digest
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return "sha256:" + digest, len(data)


def write_layout(
    layout: Path, tag: str, layers: Sequence[tuple[Layer, Path]], spec: ImageSpec, *, epoch: int
) -> str:
    """Write (or add to) the OCI layout at ``layout`` holding one image tagged
    ``tag``; ``layers`` are (layer, blob file) bottom first. Returns the manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    for layer, blob in layers:
        dst = layout / "blobs" / "sha256" / layer.digest.split(":", 1)[1]
        if not dst.exists():
            os.replace(blob, dst)
    created = _rfc3339(epoch)
    config: dict[str, Any] = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": spec.env,
            "User": spec.user,
            "WorkingDir": spec.working_dir,
            "Labels": spec.labels,
            "StopSignal": spec.stop_signal,
            **({"ExposedPorts": {p: {} for p in spec.exposed_ports}} if spec.exposed_ports else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer, _ in layers]},
        "history": [{"created": created, "created_by": layer.created_by} for layer, _ in layers],
    }
    cfg_digest, cfg_size = _put_blob(layout, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": [
            {"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer, _ in layers
        ],
        "annotations": {"org.opencontainers.image.created": created},
    }
    man_digest, man_size = _put_blob(layout, canonical_json(manifest))
    index_path = layout / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        old = json.loads(index_path.read_text())
        manifests = [
            m
            for m in old.get("manifests", [])
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
    manifests.append(
        {
            "mediaType": MEDIA_MANIFEST,
            "digest": man_digest,
            "size": man_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    manifests.sort(key=lambda m: m["annotations"]["org.opencontainers.image.ref.name"])
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
    index_path.write_bytes(canonical_json(index))
    return man_digest
