"""Agent side (kata-agent's guest-pull glue, ``kata:src/agent/src/storage/image_pull_handler.rs``,
``kata:src/agent/src/confidential_data_hub/*``).

* :class:`ImagePullHandler` handles a ``Storage`` with driver ``image_guest_pull``:
  the ``driver_options`` entry ``image_guest_pull=<json>`` gives the metadata;
  sandbox containers get the built-in pause bundle, everything else is pulled
  by CDH (``api.ImagePullService/PullImage``) into ``/run/kata-containers/<cid>``
  within ``agent.image_pull_timeout``; the result is the rootfs path.
* :func:`unseal_env` / :func:`unseal_sealed_mounts`: sealed secrets in
  environment variables (``KEY=sealed.…``) and in files of every mount shared
  from the host (source under ``/run/kata-containers/shared/containers``) are
  unsealed through CDH (``api.SealedSecretService/UnsealSecret``), as the Kata
  agent does (``rpc.rs`` ``cdh_handler_sealed_secrets``): a file's plaintext
  goes to ``<file>.unsealed`` beside it and the volume's entry is re-pointed
  there. A secret that cannot be unsealed is logged and keeps its sealed value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from coco_common.files import read_bounded, write_atomic
from coco_common.strict_json import strict_loads, strict_object
from coco_rpc import CDH_SOCKET, IMAGE_PULL_SERVICE, SEALED_SECRET_SERVICE, RpcError, connect
from coco_rpc.protos import api_pb2
from guest_pull.errors import AgentError, PullFailed
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
    "KATA_GUEST_SHARE_DIR",
    "PAUSE_BUNDLE",
    "SEALED_PREFIX",
    "UNSEALED_SUFFIX",
    "CdhClient",
    "ImagePullHandler",
    "ImagePullVolume",
    "image_pull_volume",
    "is_sandbox",
    "is_sealed_secret_source",
    "unseal_directory",
    "unseal_env",
    "unseal_sealed_mounts",
]

log = logging.getLogger(__name__)

PAUSE_BUNDLE = Path("/pause_bundle")
SEALED_PREFIX = "sealed."
#: mounts whose source is under here are searched for sealed secrets (kata ``rpc.rs``)
KATA_GUEST_SHARE_DIR = PurePosixPath("/run/kata-containers/shared/containers")
#: mount sources ending so are the runtime's own files, never searched (kata ``rpc.rs``)
_NOT_SECRET_SUFFIXES = ("resolv.conf", "termination-log", "hostname", "hosts", "serviceaccount")
UNSEALED_SUFFIX = ".unsealed"
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
            if not isinstance(doc, dict):
                raise AgentError("Storage.driver_options: image_guest_pull must be a JSON object")
            # absent metadata is an empty map (kata-types serde default; runtime-rs sends {})
            meta = doc.get("metadata", {})
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
            raise PullFailed(
                f"CDH PullImage of {storage.source} failed: {exc.message}", image=storage.source
            ) from exc
        self.digests[container_id] = digest
        log.info("pulled %s (%s) into %s", storage.source, digest, bundle)
        return bundle / "rootfs"

    def unpack_pause(self, container_id: str) -> Path:
        """Copy the built-in pause bundle (config.json + its one binary)."""
        src_config = self.pause_bundle / "config.json"
        try:
            raw = read_bounded(src_config, MAX_PAUSE_CONFIG_BYTES)
        except OSError as exc:
            raise AgentError(f"pause bundle: cannot read {src_config}: {exc.strerror}") from exc
        except ValueError as exc:  # too large, or not a regular file
            raise AgentError(f"pause bundle: {exc}") from exc
        config = strict_object(raw, error=AgentError, what="pause bundle: config.json")
        process = config.get("process")
        args = process.get("args") if isinstance(process, dict) else None
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
    """Replace ``KEY=sealed.…`` entries by their unsealed values. One that
    cannot be unsealed (CDH refuses it, or the plaintext is not UTF-8) is
    logged and kept sealed, as the Kata agent does."""
    out: list[str] = []
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and value.startswith(SEALED_PREFIX):
            try:
                plain = await cdh.unseal_secret(value.encode(), timeout=timeout)
                entry = f"{key}={plain.decode('utf-8')}"
            except RpcError as exc:
                log.warning("failed to unseal environment variable %s: %s", key[:128], exc.message)
            except UnicodeDecodeError:
                log.warning("failed to unseal environment variable %s: the plaintext is not UTF-8", key[:128])
        out.append(entry)
    return out


def is_sealed_secret_source(source: str, shared_dir: PurePosixPath = KATA_GUEST_SHARE_DIR) -> bool:
    """Whether the Kata agent searches a mount with this source for sealed secrets."""
    return source.startswith(str(shared_dir)) and not source.endswith(_NOT_SECRET_SUFFIXES)


async def unseal_sealed_mounts(
    cdh: CdhClient,
    mounts: Sequence[Mapping[str, Any]],
    *,
    timeout: float = 50.0,
    shared_dir: PurePosixPath = KATA_GUEST_SHARE_DIR,
) -> list[dict[str, Any]]:
    """For every mount shared from the host (:func:`is_sealed_secret_source`),
    unseal the sealed files in its source directory (see :func:`unseal_directory`).
    The mounts come back unchanged (destinations included); a failure is logged
    and leaves that secret sealed."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        mount = dict(m)
        source = mount.get("source")
        if isinstance(source, str) and is_sealed_secret_source(source, shared_dir):
            try:
                await unseal_directory(cdh, Path(source), timeout=timeout)
            except (AgentError, OSError) as exc:
                log.warning("failed to unseal files of %s: %s", source, exc)
        out.append(mount)
    return out


async def unseal_directory(cdh: CdhClient, directory: Path, *, timeout: float = 50.0) -> list[str]:
    """Unseal every entry of ``directory`` whose file starts with ``sealed.``.

    As the Kata agent: the whole content goes to CDH, the plaintext is written
    to ``<file>.unsealed`` next to the (resolved) file, and the entry becomes a
    relative symlink to it (in a Kubernetes secret volume ``key ->
    ..<timestamp>/key.unsealed``); the sealed file stays. Unlike the agent, a
    link leading out of the volume is not followed, the plaintext keeps the
    sealed file's mode, the link is replaced atomically, and one bad secret
    does not stop the others. Returns the names of the entries unsealed."""
    try:
        root = directory.resolve(strict=True)
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise AgentError(f"sealed secret directory {directory}: {exc.strerror}") from exc
    done: list[str] = []
    for entry in entries:
        if not (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
            continue
        try:
            if await _unseal_entry(cdh, root, Path(entry.path), timeout):
                done.append(entry.name)
        except AgentError as exc:
            log.warning("%s", exc)
    return done


async def _unseal_entry(cdh: CdhClient, root: Path, link: Path, timeout: float) -> bool:
    name = link.name
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise AgentError(f"sealed volume: {name}: cannot resolve it") from exc
    if root not in target.parents:
        raise AgentError(f"sealed volume: skipping {name} (points outside the volume)")
    if not target.is_file() or target.name.endswith(UNSEALED_SUFFIX):
        return False
    try:
        with target.open("rb") as f:
            content = f.read(MAX_SECRET_FILE_BYTES + 1)
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
    except OSError as exc:
        raise AgentError(f"sealed volume: cannot read {name}: {exc.strerror}") from exc
    if not content.startswith(SEALED_PREFIX.encode()):
        return False
    if len(content) > MAX_SECRET_FILE_BYTES:
        raise AgentError(f"sealed volume: {name} is larger than {MAX_SECRET_FILE_BYTES} bytes; left sealed")
    try:
        plain = await cdh.unseal_secret(content, timeout=timeout)
    except RpcError as exc:
        raise AgentError(f"failed to unseal {name}: {exc.message}; left sealed") from exc
    unsealed = target.with_name(target.name + UNSEALED_SUFFIX)
    tmp_link = link.with_name(f".{name}.unsealed-link")
    try:
        write_atomic(unsealed, plain, mode=mode)
    except OSError as exc:
        raise AgentError(f"sealed volume: cannot write {name}{UNSEALED_SUFFIX}: {exc.strerror}") from exc
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(os.path.relpath(unsealed, link.parent))
        os.replace(tmp_link, link)
    except OSError as exc:
        for leftover in (tmp_link, unsealed):  # no plaintext without the link that uses it
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise AgentError(f"sealed volume: cannot write {name}{UNSEALED_SUFFIX}: {exc.strerror}") from exc
    return True
