"""Bundle creation: ``<bundle>/rootfs`` and ``<bundle>/config.json``.

rootfs is an overlayfs mount of the committed layers (lowerdir newest first,
upper/work dirs in the layer store) or, where overlay is unavailable, a
flattened copy built in a temporary directory and renamed into place. Long
lowerdir lists are mounted through short symlink names relative to a
per-bundle directory (``mount`` runs with that directory as cwd), so hundreds
of layers fit the one-page mount option limit.

config.json follows the OCI runtime spec as ``umoci unpack`` / image-rs
produce it: process args = Entrypoint + Cmd, env, cwd, user (numeric, or
names resolved in the image's /etc/passwd and /etc/group without following
symlinks out of the rootfs), Volumes as tmpfs mounts (image-rs), labels and
image metadata as annotations.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_common.files import write_atomic
from image_pull.errors import BundleError
from image_pull.manifest import ImageConfig
from image_pull.unpack.overlay import OVERLAY_OPAQUE, copy_file_sparse

__all__ = [
    "BundleSpec",
    "build_runtime_config",
    "check_empty_rootfs",
    "check_target",
    "copy_rootfs",
    "make_bundle",
    "mount_overlay",
    "overlay_supported",
    "release_bundle",
    "remove_stale_copies",
    "resolve_user",
    "unmount",
]

log = logging.getLogger("image_pull.bundle")

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_PASSWD = 1 << 20


# ------------------------------------------------------------------ overlay
def overlay_supported() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def mount_overlay(
    lowers_top_first: Sequence[Path], upper: Path, work: Path, target: Path, links_dir: Path
) -> None:
    """Mount overlay at ``target``; ``links_dir`` receives short symlinks to the lowers."""
    links_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for i, d in enumerate(lowers_top_first):
        name = format(i, "x")
        link = links_dir / name
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(d, link)
        names.append(name)
    if not names:
        empty = links_dir / "empty"
        empty.mkdir(exist_ok=True)
        names.append("empty")
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    # upper/work relative to links_dir too (the mount runs there): a work dir whose path
    # holds "," or ":" would otherwise add or change mount options (e.g. ",lowerdir=/")
    rel_upper, rel_work = os.path.relpath(upper, links_dir), os.path.relpath(work, links_dir)
    if any(c in p for p in (rel_upper, rel_work) for c in ",:\\"):
        raise BundleError("overlay upper/work directories must not contain ',', ':' or '\\'")
    opts = f"lowerdir={':'.join(names)},upperdir={rel_upper},workdir={rel_work}"
    if len(opts) > 4000:
        raise BundleError("too many layers for one overlay mount")
    cp = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, "--", os.path.abspath(target)],
        cwd=links_dir,
        capture_output=True,
        timeout=60,
    )
    if cp.returncode != 0:
        msg = cp.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise BundleError(f"overlay mount failed: {msg[0][:200]}")


def unmount(target: Path) -> None:
    subprocess.run(["umount", str(target)], capture_output=True, timeout=60)
    if os.path.ismount(target):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


# ------------------------------------------------------------------ flattened copy
def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_meta(src_st: os.stat_result, dst: str, *, is_link: bool) -> None:
    with contextlib.suppress(PermissionError):
        os.lchown(dst, src_st.st_uid, src_st.st_gid)
    if not is_link:
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for n in names:
        if n.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            continue


def _apply_layer(layer: str, dest: str, links: dict[tuple[int, int], str]) -> None:
    """Copy one overlay-form layer onto ``dest`` (whiteouts delete, opaque dirs clear)."""
    dir_times: list[tuple[str, os.stat_result]] = []
    for cur, dirs, files in os.walk(layer):
        rel = os.path.relpath(cur, layer)
        tgt_dir = dest if rel == "." else os.path.join(dest, rel)
        if rel != ".":
            try:
                if os.getxattr(cur, OVERLAY_OPAQUE, follow_symlinks=False) == b"y":
                    for child in os.listdir(tgt_dir):
                        _remove(os.path.join(tgt_dir, child))
            except OSError:
                pass
        for name in list(dirs) + files:
            src = os.path.join(cur, name)
            dst = os.path.join(tgt_dir, name)
            st = os.lstat(src)
            if _is_whiteout(st):
                _remove(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    dst_st = os.lstat(dst)
                    if not stat.S_ISDIR(dst_st.st_mode):
                        _remove(dst)
                        os.mkdir(dst)
                except FileNotFoundError:
                    os.mkdir(dst)
                _copy_meta(st, dst, is_link=False)
                _copy_xattrs(src, dst)
                dir_times.append((dst, st))
                continue
            _remove(dst)
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in links:
                os.link(links[key], dst)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                _copy_meta(st, dst, is_link=True)
            elif stat.S_ISREG(st.st_mode):
                copy_file_sparse(src, dst)
                _copy_meta(st, dst, is_link=False)
                _copy_xattrs(src, dst)
                if st.st_nlink > 1:
                    links[key] = dst
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                os.mknod(dst, st.st_mode, st.st_rdev)
                _copy_meta(st, dst, is_link=False)
            else:
                continue
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    for d, st in reversed(dir_times):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def remove_stale_copies(target: Path) -> None:
    """Remove ``.<target>.<hex>`` dirs that a killed :func:`copy_rootfs` left next to
    ``target``. Call with the bundle's lock held: any such dir is then stale."""
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale.is_dir() and not stale.is_symlink() and not os.path.ismount(stale):
            shutil.rmtree(stale, ignore_errors=True)


def copy_rootfs(lowers_bottom_first: Sequence[Path], target: Path) -> None:
    """Flatten layers into a temp dir next to ``target``, then rename it into place."""
    remove_stale_copies(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    tmp.mkdir(mode=0o755)
    try:
        links: dict[tuple[int, int], str] = {}
        for layer in lowers_bottom_first:
            _apply_layer(str(layer), str(tmp), links)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(target)
        os.rename(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise BundleError("no space left while copying the rootfs") from exc
        raise BundleError(f"cannot build the flattened rootfs: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ config.json
def _read_in_root(root: Path, rel: str, limit: int) -> bytes | None:
    """Read root/rel without following any symlink (absent if one is met)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = rel.split("/")
        for p in parts[:-1]:
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                return None
            return os.read(ffd, limit)
        finally:
            os.close(ffd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _entries(root: Path | None, file: str, fields: int) -> list[list[str]]:
    """Colon-separated entries of an /etc file read inside ``root`` (none if absent)."""
    if root is None:
        return []
    data = _read_in_root(root, file, MAX_PASSWD)
    if data is None:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        f = line.split(":")
        if len(f) >= fields and not line.startswith("#"):
            out.append(f)
    return out


def _find(entries: list[list[str]], column: int, value: str) -> list[str] | None:
    return next((e for e in entries if e[column] == value), None)


def resolve_user(spec: str, rootfs: Path | None) -> dict[str, Any]:
    """Image ``User`` ("", "uid", "name", "uid:gid", "name:group") -> runtime spec user.

    Names are looked up in the image's /etc/passwd and /etc/group (read without
    following symlinks); supplementary groups listing the user by name become
    ``additionalGids``, as umoci does. A numeric uid need not exist in /etc/passwd.
    """
    if not spec:
        return {"uid": 0, "gid": 0}
    user, _, group = spec.partition(":")
    passwd = _entries(rootfs, "etc/passwd", 4)
    ent = _find(passwd, 2, user) if user.isdigit() else _find(passwd, 0, user)
    if user.isdigit():
        uid = int(user)
    elif ent is None or not ent[2].isdigit():
        raise BundleError(f"image user {user[:40]!r} not found in the image's /etc/passwd")
    else:
        uid = int(ent[2])
    gid = int(ent[3]) if ent is not None and ent[3].isdigit() else 0
    groups = _entries(rootfs, "etc/group", 3)
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = _find(groups, 0, group)
            if g is None or not g[2].isdigit():
                raise BundleError(f"image group {group[:40]!r} not found in the image's /etc/group")
            gid = int(g[2])
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    name = ent[0] if ent is not None else None
    if name is not None and not group:
        extra = sorted(
            {int(g[2]) for g in groups if len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")} - {gid}
        )
        if extra:
            out["additionalGids"] = extra
    return out


_CAPS = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]


_BASE_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (destination, type, source, options), as umoci/runc's default spec
    ("/proc", "proc", "proc", ()),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", "ro")),
)
_VOLUME_OPTIONS = ("nosuid", "noexec", "nodev", "relatime", "rw")
_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _mounts(cfg: ImageConfig) -> list[dict[str, Any]]:
    """The runtime's default mounts, then each image Volume as a tmpfs (image-rs)."""
    rows = list(_BASE_MOUNTS) + [(vol, "tmpfs", "tmpfs", _VOLUME_OPTIONS) for vol in cfg.volumes]
    out: list[dict[str, Any]] = []
    for dest, kind, source, options in rows:
        m: dict[str, Any] = {"destination": dest, "type": kind, "source": source}
        if options:
            m["options"] = list(options)
        out.append(m)
    return out


def _annotations(cfg: ImageConfig, image_ref: str, manifest_digest: str) -> dict[str, str]:
    """Labels plus image metadata, under the OCI annotation keys."""
    out: dict[str, str] = dict(cfg.labels)
    out["org.opencontainers.image.os"] = cfg.os or "linux"
    optional = {
        "architecture": cfg.architecture,
        "variant": cfg.variant,
        "author": cfg.author,
        "created": cfg.created,
        "stopSignal": cfg.stop_signal,
        "exposedPorts": ",".join(cfg.exposed_ports),
    }
    for key, value in optional.items():
        if value:
            out[f"org.opencontainers.image.{key}"] = value
    out["org.opencontainers.image.ref.name"] = image_ref
    out["io.github.coco-py.image.manifest-digest"] = manifest_digest
    return out


def build_runtime_config(
    cfg: ImageConfig, *, rootfs: Path | None, image_ref: str, manifest_digest: str
) -> bytes:
    """config.json for the image (``rootfs`` is read for user and group names)."""
    if cfg.os and cfg.os != "linux":
        raise BundleError(f"image OS {cfg.os[:20]!r} is not supported (linux only)")
    env = list(cfg.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": resolve_user(cfg.user, rootfs),
            "args": list(cfg.entrypoint or ()) + list(cfg.cmd or ()),
            "env": env,
            "cwd": cfg.working_dir or "/",
            "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "coco",
        "mounts": _mounts(cfg),
        "annotations": _annotations(cfg, image_ref, manifest_digest),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(_MASKED_PATHS),
            "readonlyPaths": list(_READONLY_PATHS),
        },
    }
    return json.dumps(spec, indent=2).encode() + b"\n"


# ------------------------------------------------------------------ the bundle
def check_target(bundle_dir: Path) -> None:
    """``bundle_dir`` may receive a rootfs and config.json (nothing there yet, no symlinks)."""
    rootfs = bundle_dir / "rootfs"
    for p in (rootfs, bundle_dir / "config.json"):
        if os.path.islink(p):  # mount(8) and the copy would follow it out of the bundle
            raise BundleError(f"{p} is a symlink; refusing to populate it")
    if os.path.ismount(rootfs):
        raise BundleError(
            f"{rootfs} is already mounted; release the bundle first "
            f"(coco-image gc --release-bundle {rootfs.parent})"
        )
    if rootfs.exists() and (not rootfs.is_dir() or any(rootfs.iterdir())):
        raise BundleError(f"{rootfs} already exists and is not empty")
    if (bundle_dir / "config.json").exists():
        raise BundleError(f"{bundle_dir / 'config.json'} already exists")


def check_empty_rootfs(rootfs: Path) -> None:
    """Right before mounting: ``rootfs`` is still a real, empty directory of the bundle."""
    st = os.lstat(rootfs)
    if not stat.S_ISDIR(st.st_mode) or any(os.scandir(rootfs)):
        raise BundleError(f"{rootfs} changed under the pull (not an empty directory)")


@dataclass(frozen=True)
class BundleSpec:
    """What goes into one bundle."""

    bundle_dir: Path
    lowers_bottom_first: tuple[Path, ...]  # committed layer directories
    image: ImageConfig
    image_ref: str
    manifest_digest: str
    snapshotter: str = "auto"  # "overlay", "copy", or "auto" (overlay, else copy)


def _write_config(bundle_dir: Path, spec: bytes) -> None:
    try:
        write_atomic(bundle_dir / "config.json", spec, mode=0o644, fsync=False)  # ephemeral, as the store
    except OSError as exc:
        raise BundleError(f"cannot write {bundle_dir / 'config.json'}: {exc.strerror}") from exc


def _try_overlay(spec: BundleSpec, rootfs: Path, state: Path) -> bool:
    """Mount the layers at ``rootfs`` (upper/work in ``state``); False: fall back to a copy."""
    rootfs.mkdir(exist_ok=True)
    check_empty_rootfs(rootfs)
    try:
        mount_overlay(
            list(reversed(spec.lowers_bottom_first)), state / "upper", state / "work", rootfs, state / "l"
        )
    except BundleError:
        if spec.snapshotter == "overlay":
            raise
        log.warning("overlay mount failed; falling back to a flattened copy")
        return False
    return True


def make_bundle(
    spec: BundleSpec,
    *,
    new_overlay_state: Callable[[], Path],
    copying: Callable[[], contextlib.AbstractContextManager[None]],
) -> Path:
    """Populate ``<bundle>/rootfs`` and write ``<bundle>/config.json``; returns the rootfs.

    Call with the bundle's lock held. ``new_overlay_state`` makes the store directory
    for an overlay's upper/work dirs (the bundle's GC root); ``copying`` brackets a
    flattened copy (so GC finds a copy a killed pull left). On failure nothing the
    call made stays behind.
    """
    bundle_dir = spec.bundle_dir
    check_target(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    rootfs = bundle_dir / "rootfs"
    # what a pull killed in this step left (we hold the bundle's lock: nobody else is in it)
    remove_stale_copies(rootfs)
    for stale in bundle_dir.glob(".config.json.*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    mode = spec.snapshotter
    if mode == "auto":
        mode = "overlay" if overlay_supported() else "copy"
    mounted = copied = False
    state: Path | None = None
    try:
        if mode == "overlay":
            state = new_overlay_state()
            mounted = _try_overlay(spec, rootfs, state)
            if not mounted:
                shutil.rmtree(state, ignore_errors=True)
                state = None
        if not mounted:
            with copying():
                copy_rootfs(spec.lowers_bottom_first, rootfs)
            copied = True
        config = build_runtime_config(
            spec.image, rootfs=rootfs, image_ref=spec.image_ref, manifest_digest=spec.manifest_digest
        )
        _write_config(bundle_dir, config)
    except BaseException:
        if mounted:
            unmount(rootfs)
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)
        if copied and not os.path.islink(rootfs) and not os.path.ismount(rootfs):
            shutil.rmtree(rootfs, ignore_errors=True)  # the flattened copy this call made
        else:
            with contextlib.suppress(OSError):
                os.rmdir(rootfs)  # only ever an empty directory: never someone else's files
        raise
    return rootfs


def release_bundle(bundle_dir: Path, states: Sequence[Path]) -> None:
    """Unmount/remove ``<bundle>/rootfs`` and its config.json, and the bundle's store
    ``states`` (call with the bundle's lock held)."""
    rootfs = bundle_dir / "rootfs"
    if os.path.ismount(rootfs):
        unmount(rootfs)
    for d in states:
        shutil.rmtree(d, ignore_errors=True)
    if rootfs.is_dir() and not os.path.ismount(rootfs):
        shutil.rmtree(rootfs, ignore_errors=True)
    remove_stale_copies(rootfs)
    with contextlib.suppress(FileNotFoundError):
        (bundle_dir / "config.json").unlink()
