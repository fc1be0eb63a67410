"""SecureMount ``block-device``: LUKS2 via ``cryptsetup``, as upstream CDH does it.

Every external step goes through a :class:`CommandRunner`, so the exact
command sequence can be checked without device-mapper (tests) and the same
module drives real ``cryptsetup`` inside a VM (:class:`SubprocessRunner`).

The LUKS key is always passed on stdin (``-`` / ``-d -``), never in argv or
on disk. For ``sourceType=empty`` the LUKS2 header is *detached* into a file
under ``/run/confidential-containers/cdh/luks-headers/`` (guest memory), so
the host never sees LUKS metadata it could tamper with. With
``dataIntegrity=true`` the device gets ``--integrity hmac-sha256`` and, before
``mkfs.ext4``, block 0 and every superblock-backup block are zeroed through
the mapping (giving them valid integrity tags) and ``lazy_itable_init=0`` is
added, the fix for AEAD I/O errors (gc PR #1451).

Failure half way rolls back whatever was done (unmount, symlink, close the
mapping, delete the header) so nothing stays mapped or mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cdh.errors import CdhError, SecureMountError
from cdh.files import read_limited
from coco_common.b64 import b64url_encode

__all__ = [
    "EPHEMERAL_KEY_BYTES",
    "HEADER_SIZE",
    "LUKS_HEADER_DIR",
    "BlockDeviceOptions",
    "CommandResult",
    "CommandRunner",
    "SecureMounter",
    "SubprocessRunner",
    "emptydir_request_options",
    "parse_block_device_options",
    "trusted_storage_request_options",
]

log = logging.getLogger(__name__)

LUKS_HEADER_DIR = Path("/run/confidential-containers/cdh/luks-headers")
HEADER_SIZE = 16 << 20
EPHEMERAL_KEY_BYTES = 4096
MAX_KEY_BYTES = 64 << 10
TRUSTED_IMAGE_STORAGE_MOUNT = "/run/kata-containers/image/"
_MAPPER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,126}$")
_DEVID_RE = re.compile(r"^(\d{1,10}):(\d{1,10})$")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""


class CommandRunner(Protocol):
    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult: ...


class SubprocessRunner:
    """Runs the real tools (they must be in PATH)."""

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise SecureMountError(f"{argv[0]} is not installed") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError as exc:
            await self._kill(proc)
            raise SecureMountError(f"{argv[0]} did not finish in {self.timeout:.0f}s") from exc
        except BaseException:  # cancelled: the tool must not finish after the rollback ran
            await asyncio.shield(self._kill(proc))
            raise
        return CommandResult(proc.returncode or 0, out[-65536:], err[-65536:])

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


@dataclass(frozen=True)
class BlockDeviceOptions:
    source_type: str  # "empty" | "encrypted"
    encryption_type: str  # "luks2" (zfs is refused)
    target_type: str  # "device" | "fileSystem"
    device_path: str | None = None
    device_id: str | None = None  # "MAJ:MIN", wins over device_path
    key: str | None = None  # sealed.… | kbs:///… | file:///… ; None -> ephemeral
    filesystem_type: str = "ext4"
    mkfs_opts: tuple[str, ...] = ()
    data_integrity: bool = False
    mapper_name: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __repr__(self) -> str:  # the key may be a sealed secret: never print it
        return (
            f"BlockDeviceOptions(source_type={self.source_type!r}, target_type={self.target_type!r}, "
            f"device={self.device_id or self.device_path!r}, integrity={self.data_integrity})"
        )


_KNOWN_OPTIONS = {
    "deviceId",
    "devicePath",
    "sourceType",
    "encryptionType",
    "key",
    "targetType",
    "filesystemType",
    "mkfsOpts",
    "dataIntegrity",
    "mapperName",
    "pool",
    "dataset",
}


def parse_block_device_options(untrusted: Mapping[str, str]) -> BlockDeviceOptions:
    extra = set(untrusted) - _KNOWN_OPTIONS
    if extra:
        raise SecureMountError(f"unknown block-device options: {sorted(extra)}")
    source = untrusted.get("sourceType")
    if source not in ("empty", "encrypted"):
        raise SecureMountError('sourceType must be "empty" or "encrypted"')
    enc = untrusted.get("encryptionType")
    if enc == "zfs":
        raise SecureMountError("encryptionType zfs is not supported by this CDH (luks2 only)")
    if enc != "luks2":
        raise SecureMountError('encryptionType must be "luks2"')
    target = untrusted.get("targetType")
    if target not in ("device", "fileSystem"):
        raise SecureMountError('targetType must be "device" or "fileSystem" for luks2')
    fs = untrusted.get("filesystemType", "ext4")
    if fs != "ext4":
        raise SecureMountError("filesystemType must be ext4")
    integrity = untrusted.get("dataIntegrity", "false")
    if integrity not in ("true", "false"):
        raise SecureMountError('dataIntegrity must be "true" or "false"')
    device_id = untrusted.get("deviceId") or None
    device_path = untrusted.get("devicePath") or None
    if device_id is None and device_path is None:
        raise SecureMountError("deviceId or devicePath is required")
    if device_id is not None and not _DEVID_RE.match(device_id):
        raise SecureMountError("deviceId must look like MAJ:MIN")
    if device_path is not None and not device_path.startswith("/"):
        raise SecureMountError("devicePath must be an absolute path")
    mapper = untrusted.get("mapperName") or str(uuid.uuid4())
    if not _MAPPER_RE.match(mapper):
        raise SecureMountError("mapperName may only hold letters, digits, '_', '.', '-'")
    mkfs = tuple(untrusted.get("mkfsOpts", "").split())
    if mkfs and source != "empty":
        log.warning("mkfsOpts ignored: the source is not empty")
    return BlockDeviceOptions(
        source_type=source,
        encryption_type=enc,
        target_type=target,
        device_path=device_path,
        device_id=device_id,
        key=untrusted.get("key") or None,
        filesystem_type=fs,
        mkfs_opts=mkfs,
        data_integrity=integrity == "true",
        mapper_name=mapper,
    )


def trusted_storage_request_options(device_id: str, *, integrity: bool = True) -> dict[str, str]:
    """Options kata-agent sends to secure-mount ``/dev/trusted_store`` at the
    image work dir (:data:`TRUSTED_IMAGE_STORAGE_MOUNT`), ephemeral key."""
    return {
        "deviceId": device_id,
        "sourceType": "empty",
        "targetType": "fileSystem",
        "filesystemType": "ext4",
        "mkfsOpts": "-E lazy_journal_init",
        "encryptionType": "luks2",
        "dataIntegrity": "true" if integrity else "false",
    }


def emptydir_request_options(device_id: str, *, integrity: bool = True) -> dict[str, str]:
    """Options kata-agent sends for an encrypted emptyDir block volume."""
    return {
        **trusted_storage_request_options(device_id, integrity=integrity),
        "mkfsOpts": "-O ^has_journal -m 0 -i 163840 -I 128",
    }


KeySource = Callable[[str], Awaitable[bytes]]
"""Resolves ``kbs://`` URIs or unseals ``sealed.`` secrets to key bytes."""


#: the steps to take back, each named for the log, in the order they were taken
_Undo = list[tuple[str, Callable[[], Awaitable[None]]]]


async def _roll_back(undo: _Undo) -> None:
    for what, fn in reversed(undo):
        try:
            await fn()
        except Exception as exc:
            log.error("secure mount rollback step %r failed: %s", what, exc)


class SecureMounter:
    def __init__(
        self,
        *,
        runner: CommandRunner | None = None,
        get_resource: KeySource | None = None,
        unseal: KeySource | None = None,
        header_dir: Path = LUKS_HEADER_DIR,
        mapper_dir: Path = Path("/dev/mapper"),
        sysfs_dev_block: Path = Path("/sys/dev/block"),
        dev_dir: Path = Path("/dev"),
    ) -> None:
        self.runner = runner or SubprocessRunner()
        self._get_resource = get_resource
        self._unseal = unseal
        self.header_dir = header_dir
        self.mapper_dir = mapper_dir
        self.sysfs_dev_block = sysfs_dev_block
        self.dev_dir = dev_dir
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- inputs

    def resolve_device(self, opts: BlockDeviceOptions) -> Path:
        if opts.device_id is not None:
            uevent = self.sysfs_dev_block / opts.device_id / "uevent"
            try:
                text = read_limited(uevent, 64 << 10).decode(errors="replace")
            except OSError as exc:
                raise SecureMountError(f"no block device {opts.device_id} ({uevent} unreadable)") from exc
            for line in text.splitlines():
                if line.startswith("DEVNAME="):
                    name = line[len("DEVNAME=") :].strip()
                    parts = name.split("/")
                    if not name.isprintable() or any(p in ("", ".", "..") for p in parts):
                        break  # must stay under /dev
                    return self.dev_dir / name
            raise SecureMountError(f"{uevent} has no usable DEVNAME")
        assert opts.device_path is not None
        p = Path(opts.device_path)
        if not p.exists():
            raise SecureMountError(f"device {p} does not exist")
        return p

    async def _key(self, opts: BlockDeviceOptions) -> bytes:
        k = opts.key
        if k is None:
            return os.urandom(EPHEMERAL_KEY_BYTES)
        try:
            if k.startswith("sealed."):
                if self._unseal is None:
                    raise SecureMountError("sealed-secret keys are not available")
                key = await self._unseal(k)
            elif k.startswith("kbs://") or k.startswith("kbs+"):
                if self._get_resource is None:
                    raise SecureMountError("kbs:// keys are not available (no KBC)")
                key = await self._get_resource(k)
            elif k.startswith("file://"):
                key = read_limited(Path(k[len("file://") :]), MAX_KEY_BYTES)
            else:
                raise SecureMountError("key must be a sealed secret, a kbs:// URI or a file:// URI")
        except SecureMountError:
            raise
        except CdhError as exc:
            raise SecureMountError(f"cannot get the LUKS key: {exc}") from exc
        except OSError as exc:
            raise SecureMountError(f"cannot read the LUKS key file: {exc.strerror}") from exc
        if not key or len(key) > MAX_KEY_BYTES:
            raise SecureMountError("LUKS key must be 1 byte to 64 KiB")
        return key

    def header_path(self, device: Path) -> Path:
        name = b64url_encode(str(device).encode())
        return self.header_dir / f"{name}.header"

    # ---------------------------------------------------------------- steps

    async def _run(self, argv: Sequence[str], *, stdin: bytes | None = None, what: str) -> CommandResult:
        res = await self.runner.run(argv, stdin=stdin)
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            detail = err[-1][:300] if err else f"exit status {res.returncode}"
            raise SecureMountError(f"{what} failed: {detail}")
        return res

    @staticmethod
    def _backup_blocks(mkfs_dry_run_output: str) -> list[int]:
        m = re.search(r"Superblock backups stored on blocks:\s*([\d,\s]+)", mkfs_dry_run_output)
        if not m:
            return []
        return [int(x) for x in re.findall(r"\d+", m.group(1))]

    async def secure_mount(self, volume_type: str, options: Mapping[str, str], mount_point: str) -> None:
        if volume_type != "block-device":
            raise SecureMountError(f"unsupported volume_type {volume_type!r} (supported: block-device)")
        if not mount_point.startswith("/"):
            raise SecureMountError("mount_point must be an absolute path")
        opts = parse_block_device_options(options)
        async with self._lock:
            await self._luks2(opts, Path(mount_point))

    async def _luks2(self, opts: BlockDeviceOptions, mount_point: Path) -> None:
        """Format (an empty source), open, then link or mount; any failure, or a cancellation,
        undoes the steps already taken, newest first."""
        device = self.resolve_device(opts)
        mapper_dev = self.mapper_dir / opts.mapper_name
        if mapper_dev.exists() or mapper_dev.is_symlink():
            raise SecureMountError(f"mapping {opts.mapper_name} already exists")
        key = await self._key(opts)
        undo: _Undo = []
        try:
            header = (
                await self._format_empty(opts, device, key, undo) if opts.source_type == "empty" else None
            )
            await self._open(opts, device, header, key, mapper_dev, undo)
            if opts.target_type == "device":
                self._link(mount_point, mapper_dev, undo)
            else:
                if opts.source_type == "empty":
                    await self._mkfs(opts, mapper_dev)
                await self._mount(opts, mapper_dev, mount_point, undo)
        except BaseException:
            await _roll_back(undo)
            raise
        log.info("secure mount of %s at %s done (mapping %s)", device, mount_point, opts.mapper_name)

    async def _format_empty(self, opts: BlockDeviceOptions, device: Path, key: bytes, undo: _Undo) -> Path:
        """A fresh detached LUKS2 header for ``device`` (never over an existing one), then luksFormat."""
        header = self.header_path(device)
        probe = await self.runner.run(["cryptsetup", "isLuks", str(device)])
        if probe.returncode == 0:
            raise SecureMountError(
                f"{device} already holds a LUKS header; refusing to format it as an empty source"
            )
        self.header_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(header, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise SecureMountError(
                f"{device} already has a detached LUKS header (already formatted); refusing to format"
            ) from exc

        async def _rm_header() -> None:
            header.unlink(missing_ok=True)

        undo.append(("remove header", _rm_header))
        try:
            os.ftruncate(fd, HEADER_SIZE)
        finally:
            os.close(fd)
        fmt = ["cryptsetup", "--batch-mode", "luksFormat", "--type", "luks2", "--cipher", "aes-xts-plain64"]
        fmt += ["--sector-size", "4096", "--header", str(header)]
        if opts.data_integrity:
            fmt += ["--integrity", "hmac-sha256", "--integrity-no-wipe", "--integrity-no-journal"]
        fmt += [str(device), "-"]
        await self._run(fmt, stdin=key, what="cryptsetup luksFormat")
        return header

    async def _open(
        self,
        opts: BlockDeviceOptions,
        device: Path,
        header: Path | None,
        key: bytes,
        mapper_dev: Path,
        undo: _Undo,
    ) -> None:
        openc = ["cryptsetup", "luksOpen"]
        if header is not None:
            openc += ["--header", str(header)]
        openc += ["-d", "-", str(device), opts.mapper_name]
        opened = False

        async def _close() -> None:
            # also when luksOpen was interrupted after it created the mapping
            if opened or mapper_dev.exists():
                await self._run(["cryptsetup", "luksClose", opts.mapper_name], what="cryptsetup luksClose")

        undo.append(("close mapping", _close))
        await self._run(openc, stdin=key, what="cryptsetup luksOpen")
        opened = True

    @staticmethod
    def _link(mount_point: Path, mapper_dev: Path, undo: _Undo) -> None:
        """``target_type=device``: the mount point becomes a link to the mapping."""
        mount_point.parent.mkdir(parents=True, exist_ok=True)
        if mount_point.exists() or mount_point.is_symlink():
            raise SecureMountError(f"{mount_point} already exists")
        mount_point.symlink_to(mapper_dev)

        async def _unlink() -> None:
            mount_point.unlink(missing_ok=True)

        undo.append(("remove symlink", _unlink))

    async def _mount(
        self, opts: BlockDeviceOptions, mapper_dev: Path, mount_point: Path, undo: _Undo
    ) -> None:
        created = not mount_point.exists()
        mount_point.mkdir(parents=True, exist_ok=True)
        if created:

            async def _rmdir() -> None:
                with contextlib.suppress(OSError):
                    mount_point.rmdir()

            undo.append(("remove mount point", _rmdir))

        was_mounted = os.path.ismount(mount_point)  # someone else's: never undone

        async def _umount() -> None:
            # an interrupted mount tool may leave the kernel's mount in place
            if not was_mounted and os.path.ismount(mount_point):
                await self._run(["umount", str(mount_point)], what="umount")

        undo.append(("unmount", _umount))
        await self._run(
            ["mount", "-t", opts.filesystem_type, "-o", "noatime", str(mapper_dev), str(mount_point)],
            what="mount",
        )

    async def _mkfs(self, opts: BlockDeviceOptions, mapper_dev: Path) -> None:
        user = list(opts.mkfs_opts)
        if opts.data_integrity:
            dry = await self._run(
                ["mkfs.ext4", str(mapper_dev), "-F", "-n", *user], what="mkfs.ext4 -n (superblock layout)"
            )
            text = dry.stdout.decode(errors="replace")
            blocks = [0, *self._backup_blocks(text)]
            # block numbers count file-system blocks: 4k on a 4096-byte-sector mapping,
            # but follow what mke2fs says it would use
            m = re.search(r"with \d+ (\d+)k blocks", text)
            bs = f"bs={m.group(1)}k" if m else "bs=4k"
            for b in blocks:
                await self._run(
                    [
                        "dd",
                        "if=/dev/zero",
                        f"of={mapper_dev}",
                        bs,
                        "count=1",
                        "oflag=direct",
                        f"seek={b}",
                    ],
                    what=f"zeroing block {b}",
                )
            if not any("lazy_itable_init" in o for o in user):
                user += ["-E", "lazy_itable_init=0"]
        await self._run(["mkfs.ext4", str(mapper_dev), "-F", *user], what="mkfs.ext4")
