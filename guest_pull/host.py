"""Host side (Kata runtime): turn a guest-pull container into a ``Storage``.

Mirrors ``kata:src/runtime/virtcontainers/{fs_share_linux.go,kata_agent.go}``:

* ``experimental_force_guest_pull`` (runtime config, or the sandbox annotation
  ``io.katacontainers.config.runtime.experimental_force_guest_pull``) →
  synthesise an ``image_guest_pull`` volume with empty metadata;
* otherwise every rootfs option with the ``io.katacontainers.volume=`` prefix
  is decoded; ``image_guest_pull`` volumes become Storages;
* the CRI flavour is the first of ``io.kubernetes.cri.container-type``
  (containerd) / ``io.kubernetes.cri-o.ContainerType`` (CRI-O) present; only
  then does ``io.katacontainers.pkg.oci.container_type`` count. A
  ``pod_sandbox`` gets source ``pause``; anything else the image name from
  ``io.kubernetes.cri.image-name`` (containerd, and the fallback) or
  ``io.kubernetes.cri-o.ImageName`` (CRI-O); missing → error;
* all container annotations are merged over the volume's metadata and
  serialised the way Go's ``json.Marshal`` does into
  ``driver_options = ["image_guest_pull=<json>"]``; ``fstype = "overlay"``,
  ``mount_point = /run/kata-containers/<cid>/rootfs``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coco_common.files import FileTooLarge, read_bounded
from coco_common.strict_json import strict_loads
from guest_pull.errors import HostStorageError
from guest_pull.gojson import go_marshal
from guest_pull.storage import Storage
from guest_pull.volume import (
    IMAGE_GUEST_PULL,
    VOLUME_OPTION_PREFIX,
    KataVirtualVolume,
    decode_volume_option,
)

__all__ = [
    "CONTAINER_TYPE_KEY",
    "CRIO_CONTAINER_TYPE",
    "CRIO_IMAGE_NAME",
    "CRI_CONTAINER_TYPE",
    "CRI_IMAGE_NAME",
    "FORCE_GUEST_PULL_ANNOTATION",
    "MAX_ANNOTATIONS_BYTES",
    "container_type_for_cri",
    "guest_pull_storages",
    "image_guest_pull_storage",
    "load_annotations",
    "verify_container_id",
]

CONTAINER_TYPE_KEY = "io.katacontainers.pkg.oci.container_type"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRIO_CONTAINER_TYPE = "io.kubernetes.cri-o.ContainerType"
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"
CRIO_IMAGE_NAME = "io.kubernetes.cri-o.ImageName"
FORCE_GUEST_PULL_ANNOTATION = "io.katacontainers.config.runtime.experimental_force_guest_pull"
KATA_RUN_DIR = "/run/kata-containers"
OVERLAY = "overlay"
#: Kubernetes' limit on the total size of an object's annotations.
MAX_ANNOTATIONS_BYTES = 256 * 1024
_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def verify_container_id(cid: str) -> str:
    """Kata's ``verify_id``: ``[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (no path tricks)."""
    if not _ID.fullmatch(cid) or cid in (".", ".."):
        raise HostStorageError(f"container id {cid!r} is not a valid id")
    return cid


def _check_annotations(untrusted: Any) -> dict[str, str]:
    if not isinstance(untrusted, dict):
        raise HostStorageError("annotations: must be a JSON object of strings")
    total = 0
    for k, v in untrusted.items():
        if not isinstance(v, str):
            raise HostStorageError(f"annotations: {k!r} must be a string")
        total += len(k.encode()) + len(v.encode())
    if total > MAX_ANNOTATIONS_BYTES:
        raise HostStorageError(f"annotations: {total} bytes exceed the {MAX_ANNOTATIONS_BYTES}-byte limit")
    return dict(untrusted)


def load_annotations(path: str | Path) -> dict[str, str]:
    """Read a JSON object of annotations (size-limited, duplicate keys rejected)."""
    p = Path(path)
    try:
        raw = read_bounded(p, 4 * MAX_ANNOTATIONS_BYTES)
    except FileTooLarge as exc:
        raise HostStorageError(f"annotations: file {p} is too large") from exc
    except OSError as exc:
        raise HostStorageError(f"annotations: cannot read {p}: {exc.strerror}") from exc
    except ValueError as exc:  # not a regular file
        raise HostStorageError(f"annotations: {exc}") from exc
    doc = strict_loads(raw, error=HostStorageError, what=f"annotations: {p} is not valid JSON")
    return _check_annotations(doc)


def container_type_for_cri(annotations: Mapping[str, str]) -> tuple[str, str]:
    """``(container type, CRI key)`` — both empty when no CRI key is present."""
    for key in (CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE):
        if key in annotations:
            return annotations.get(CONTAINER_TYPE_KEY, ""), key
    return "", ""


def image_guest_pull_storage(
    container_id: str, annotations: Mapping[str, str], volume: KataVirtualVolume
) -> Storage:
    """``handleImageGuestPullBlockVolume`` + ``handleVirtualVolumeStorageObject``."""
    verify_container_id(container_id)
    annotations = _check_annotations(dict(annotations))
    if volume.volume_type != IMAGE_GUEST_PULL or volume.image_pull is None:
        raise HostStorageError(f"volume of type {volume.volume_type!r} is not an image_guest_pull volume")
    ctype, cri_key = container_type_for_cri(annotations)
    if ctype == "pod_sandbox":
        image_ref = "pause"
    else:
        key = CRIO_IMAGE_NAME if cri_key == CRIO_CONTAINER_TYPE else CRI_IMAGE_NAME
        image_ref = annotations.get(key, "")
        if not image_ref:
            raise HostStorageError(f"image name missing: annotation {key} is not set")
    metadata = dict(volume.image_pull)
    metadata.update(annotations)
    options = go_marshal({"metadata": dict(sorted(metadata.items()))})
    return Storage(
        driver=IMAGE_GUEST_PULL,
        driver_options=(f"{IMAGE_GUEST_PULL}={options}",),
        source=image_ref,
        fstype=OVERLAY,
        options=(),
        mount_point=f"{KATA_RUN_DIR}/{container_id}/rootfs",
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


def guest_pull_storages(
    container_id: str,
    annotations: Mapping[str, str],
    rootfs_options: Sequence[str] = (),
    *,
    force_guest_pull: bool = False,
    sandbox_annotations: Mapping[str, str] | None = None,
) -> list[Storage]:
    """All guest-pull Storages for one container's rootfs (empty when the
    container is not pulled in the guest)."""
    sandbox = sandbox_annotations if sandbox_annotations is not None else annotations
    if force_guest_pull or _truthy(sandbox.get(FORCE_GUEST_PULL_ANNOTATION)):
        forced = KataVirtualVolume(IMAGE_GUEST_PULL, image_pull={})
        return [image_guest_pull_storage(container_id, annotations, forced)]
    out: list[Storage] = []
    for opt in rootfs_options:
        if opt.startswith(VOLUME_OPTION_PREFIX):
            vol = decode_volume_option(opt)
            if vol.volume_type == IMAGE_GUEST_PULL:
                out.append(image_guest_pull_storage(container_id, annotations, vol))
    return out
