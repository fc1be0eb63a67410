"""Agent side (kata-agent's guest-pull glue, ``kata:src/agent/src/storage/image_pull_handler.rs``,
``kata:src/agent/src/confidential_data_hub/*``).

* :class:`ImagePullHandler` handles a ``Storage`` with driver ``image_guest_pull``:
  the ``driver_options`` entry ``image_guest_pull=<json>`` gives the metadata;
  sandbox containers get the built-in pause bundle, everything else is pulled
  by CDH (``api.ImagePullService/PullImage``) into ``/run/kata-containers/<cid>``
  within ``agent.image_pull_timeout``; the result is the rootfs path.
* :func:`unseal_env` / :func:`unseal_sealed_mounts`: sealed secrets in
  environment variables (``KEY=sealed.…``) and in volumes mounted under
  ``/sealed/…`` are unsealed through CDH (``api.SealedSecretService/UnsealSecret``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from coco_common.strict_json import strict_loads
from coco_rpc import CDH_SOCKET, IMAGE_PULL_SERVICE, SEALED_SECRET_SERVICE, RpcError, connect
from coco_rpc.protos import api_pb2
from guest_pull._fs import write_atomic
from guest_pull.errors import AgentError
from guest_pull.host import (
    CRI_CONTAINER_TYPE,
    CRIO_CONTAINER_TYPE,
    KATA_RUN_DIR,
    verify_container_id,
)
from guest_pull.kernel_params import KernelParams
from guest_pull.storage import Storage
from guest_pull.volume import IMAGE_GUEST_PULL

__all__ = [
    "PAUSE_BUNDLE",
    "SEALED_PREFIX",
    "CdhClient",
    "ImagePullHandler",
    "ImagePullVolume",
    "image_pull_volume",
    "is_sandbox",
    "unseal_env",
    "unseal_sealed_mounts",
]

log = logging.getLogger(__name__)

PAUSE_BUNDLE = Path("/pause_bundle")
SEALED_PREFIX = "sealed."
SEALED_MOUNT_PREFIX = "/sealed"
MAX_DRIVER_OPTION_BYTES = 1 << 20
MAX_PAUSE_CONFIG_BYTES = 1 << 20
MAX_SECRET_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class ImagePullVolume:
    metadata: Mapping[str, str]


def image_pull_volume(storage: Storage) -> ImagePullVolume:
    """The ``image_guest_pull=<json>`` driver option of ``storage``."""
    if storage.driver != IMAGE_GUEST_PULL:
        raise AgentError(f"Storage.driver is {storage.driver!r}, not {IMAGE_GUEST_PULL!r}")
    for opt in storage.driver_options:
        key, sep, value = opt.partition("=")
        if sep and key == IMAGE_GUEST_PULL:
            if len(value) > MAX_DRIVER_OPTION_BYTES:
                raise AgentError("Storage.driver_options: image_guest_pull value is too large")
            try:
                doc = strict_loads(value)
            except ValueError as exc:
                raise AgentError("Storage.driver_options: image_guest_pull value is not JSON") from exc
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise AgentError("Storage.driver_options: image_guest_pull needs a metadata map of strings")
            return ImagePullVolume(MappingProxyType(dict(meta)))
    raise AgentError("Storage.driver_options: missing the 'image_guest_pull=' entry")


def is_sandbox(metadata: Mapping[str, str]) -> bool:
    return metadata.get(CRI_CONTAINER_TYPE) == "sandbox" or metadata.get(CRIO_CONTAINER_TYPE) == "sandbox"


class CdhClient:
    """The two CDH calls the agent makes, over ttRPC (or gRPC for host:port)."""

    def __init__(self, address: str = CDH_SOCKET) -> None:
        self.address = address

    async def pull_image(self, image: str, bundle: str, *, timeout: float) -> str:
        client = connect(self.address)
        try:
            resp = await client.call(
                IMAGE_PULL_SERVICE,
                "PullImage",
                api_pb2.ImagePullRequest(image_url=image, bundle_path=bundle),
                api_pb2.ImagePullResponse,
                timeout=timeout,
            )
        finally:
            await client.close()
        return resp.manifest_digest

    async def unseal_secret(self, secret: bytes, *, timeout: float) -> bytes:
        client = connect(self.address)
        try:
            resp = await client.call(
                SEALED_SECRET_SERVICE,
                "UnsealSecret",
                api_pb2.UnsealSecretInput(secret=secret),
                api_pb2.UnsealSecretOutput,
                timeout=timeout,
            )
        finally:
            await client.close()
        return resp.plaintext


class ImagePullHandler:
    def __init__(
        self,
        cdh: CdhClient | None,
        *,
        run_dir: Path = Path(KATA_RUN_DIR),
        pause_bundle: Path = PAUSE_BUNDLE,
        image_pull_timeout: float = 1200.0,
    ) -> None:
        self.cdh = cdh
        self.run_dir = run_dir
        self.pause_bundle = pause_bundle
        self.image_pull_timeout = image_pull_timeout
        #: manifest digest CDH reported, per container id
        self.digests: dict[str, str] = {}

    @classmethod
    def from_kernel_params(
        cls, params: KernelParams, cdh: CdhClient | None, *, run_dir: Path = Path(KATA_RUN_DIR),
        pause_bundle: Path = PAUSE_BUNDLE,
    ) -> ImagePullHandler:  # fmt: skip
        """A handler using ``agent.image_pull_timeout`` from the kernel command line."""
        return cls(
            cdh, run_dir=run_dir, pause_bundle=pause_bundle, image_pull_timeout=params.image_pull_timeout
        )

    async def create_device(self, storage: Storage, container_id: str) -> Path:
        """Handle one ``image_guest_pull`` Storage; returns the rootfs path."""
        verify_container_id(container_id)
        volume = image_pull_volume(storage)
        if is_sandbox(volume.metadata):
            return self.unpack_pause(container_id)
        if not storage.source:
            raise AgentError("Storage.source: the image reference is empty")
        if self.cdh is None:
            raise AgentError("guest pull needs the Confidential Data Hub, which is not running")
        bundle = self.run_dir / container_id
        bundle.mkdir(parents=True, exist_ok=True)
        try:
            digest = await self.cdh.pull_image(storage.source, str(bundle), timeout=self.image_pull_timeout)
        except RpcError as exc:
            raise AgentError(f"CDH PullImage of {storage.source} failed: {exc.message}") from exc
        self.digests[container_id] = digest
        log.info("pulled %s (%s) into %s", storage.source, digest, bundle)
        return bundle / "rootfs"

    def unpack_pause(self, container_id: str) -> Path:
        """Copy the built-in pause bundle (config.json + its one binary)."""
        src_config = self.pause_bundle / "config.json"
        try:
            with src_config.open("rb") as f:
                raw = f.read(MAX_PAUSE_CONFIG_BYTES + 1)
            config = json.loads(raw)
        except OSError as exc:
            raise AgentError(f"pause bundle: cannot read {src_config}: {exc.strerror}") from exc
        except ValueError as exc:
            raise AgentError("pause bundle: config.json is not JSON") from exc
        args = config.get("process", {}).get("args") if isinstance(config, dict) else None
        if not isinstance(args, list) or not args or not isinstance(args[0], str):
            raise AgentError("pause bundle: config.json has no process.args[0]")
        rel = PurePosixPath(args[0])
        if not rel.is_absolute() or ".." in rel.parts:
            raise AgentError(
                f"pause bundle: process.args[0] {args[0]!r} must be an absolute path without '..'"
            )
        bundle = self.run_dir / container_id
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        if not (bundle / "config.json").exists():
            shutil.copyfile(src_config, bundle / "config.json")
        src_bin = self.pause_bundle / "rootfs" / rel.relative_to("/")
        dst_bin = rootfs / rel.relative_to("/")
        if not dst_bin.exists():
            if src_bin.is_symlink() or not src_bin.is_file():
                raise AgentError(f"pause bundle: {args[0]} is not a regular file in the bundle")
            dst_bin.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_bin, dst_bin)
        return rootfs


async def unseal_env(cdh: CdhClient, env: Sequence[str], *, timeout: float = 50.0) -> list[str]:
    """Replace ``KEY=sealed.…`` entries by their unsealed values."""
    out: list[str] = []
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and value.startswith(SEALED_PREFIX):
            try:
                plain = await cdh.unseal_secret(value.encode(), timeout=timeout)
            except RpcError as exc:
                raise AgentError(f"unsealing environment variable {key} failed: {exc.message}") from exc
            try:
                entry = f"{key}={plain.decode('utf-8')}"
            except UnicodeDecodeError as exc:
                raise AgentError(f"environment variable {key}: unsealed value is not UTF-8") from exc
        out.append(entry)
    return out


async def unseal_sealed_mounts(
    cdh: CdhClient, mounts: Sequence[Mapping[str, Any]], *, timeout: float = 50.0
) -> list[dict[str, Any]]:
    """For mounts whose destination starts with ``/sealed``: strip that prefix
    from the destination and unseal every sealed file in the source directory
    in place (symlinks, as Kubernetes secret volumes use, are followed only
    within the volume)."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        mount = dict(m)
        dest = str(mount.get("destination", ""))
        if dest.startswith(SEALED_MOUNT_PREFIX + "/"):
            mount["destination"] = dest[len(SEALED_MOUNT_PREFIX) :]
            source = mount.get("source")
            if isinstance(source, str) and source:
                await _unseal_dir(cdh, Path(source), timeout)
        out.append(mount)
    return out


async def _unseal_dir(cdh: CdhClient, directory: Path, timeout: float) -> None:
    root = directory.resolve()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not (entry.is_file() or entry.is_symlink()):
            continue
        target = Path(entry.path).resolve()
        if root not in target.parents or not target.is_file():
            log.warning("sealed volume: skipping %s (points outside the volume)", entry.name)
            continue
        with target.open("rb") as f:
            content = f.read(MAX_SECRET_FILE_BYTES + 1)
        if not content.startswith(SEALED_PREFIX.encode()):
            continue
        if len(content) > MAX_SECRET_FILE_BYTES:
            raise AgentError(f"sealed volume: {entry.name} is too large")
        try:
            plain = await cdh.unseal_secret(content.strip(), timeout=timeout)
        except RpcError as exc:
            raise AgentError(f"unsealing {entry.name} failed: {exc.message}") from exc
        try:
            write_atomic(target, plain, 0o400)
        except OSError as exc:
            raise AgentError(
                f"sealed volume: cannot write the unsealed {entry.name}: {exc.strerror}"
            ) from exc
