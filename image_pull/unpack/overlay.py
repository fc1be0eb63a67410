"""Overlayfs semantics over unpacked layer directories: hardlink copy-up.

A layer may hardlink to a file that only a lower layer holds. The unpacker
defers such links (``UnpackOptions.defer_missing_hardlinks``); once the lower
layers are committed, :func:`copy_up_links` resolves each target as overlayfs
would show it through the lowers (whiteouts and opaque directories hide what
is below them), copies it up into the layer with its metadata, then links.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from image_pull.errors import UnpackError

__all__ = ["OVERLAY_OPAQUE", "copy_file_sparse", "copy_up_links", "find_in_lowers", "is_whiteout"]

OVERLAY_OPAQUE = "trusted.overlay.opaque"


def is_whiteout(path: Path) -> bool:
    """An overlayfs whiteout: a character device 0/0."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def find_in_lowers(rel: str, lowers_top_first: Sequence[Path]) -> tuple[Path, Path] | None:
    """(layer, path) of the file ``rel`` as overlayfs would show it from the lowers."""
    parts = rel.split("/")
    for low in lowers_top_first:
        hidden_below = False
        cur = low
        for k, p in enumerate(parts):
            cur = cur / p
            if is_whiteout(cur):
                return None
            if k < len(parts) - 1:
                if os.path.islink(cur):
                    raise UnpackError(f"hardlink target {rel[:80]!r} goes through a symlink")
                if _opaque(cur):
                    hidden_below = True
        if (os.path.lexists(cur) and not os.path.isdir(cur)) or os.path.islink(cur):
            return low, cur
        if hidden_below:
            return None
    return None


def _copy_range(sfd: int, dfd: int, start: int, end: int) -> None:
    off = start
    while off < end:
        try:
            n = os.copy_file_range(sfd, dfd, min(end - off, 1 << 30), off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(sfd, min(end - off, 1 << 20), off)
            n = os.pwrite(dfd, data, off) if data else 0
        if n == 0:
            raise OSError(errno.EIO, "source file shrank while it was copied")
        off += n


def copy_file_sparse(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a regular file (never following a symlink), keeping its holes: only the
    data regions (``SEEK_DATA``/``SEEK_HOLE``) are copied, so a sparse file costs
    its real blocks, not its apparent size (``shutil.copyfile`` writes holes as zeros)."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(sfd).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(sfd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole from here to the end
                        break
                    raise
                end = os.lseek(sfd, start, os.SEEK_HOLE)
                _copy_range(sfd, dfd, start, end)
                pos = end
            os.ftruncate(dfd, size)  # a trailing hole
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _make_parents(layer_fs: Path, low: Path, target_rel: str) -> None:
    """The target's parent directories in the layer, with the lower directories' metadata."""
    cur_dst, cur_src = layer_fs, low
    for p in target_rel.split("/")[:-1]:
        cur_dst, cur_src = cur_dst / p, cur_src / p
        if not os.path.lexists(cur_dst):
            st = os.lstat(cur_src) if os.path.isdir(cur_src) else None
            os.mkdir(cur_dst, 0o755)
            if st is not None:
                os.chown(cur_dst, st.st_uid, st.st_gid)
                os.chmod(cur_dst, stat.S_IMODE(st.st_mode))
        elif not os.path.isdir(cur_dst) or os.path.islink(cur_dst):
            raise UnpackError(f"cannot place hardlink target {target_rel[:80]!r}")


def _copy_up(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    else:
        copy_file_sparse(src, dst)
        os.chown(dst, st.st_uid, st.st_gid)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _no_symlink_parents(layer_fs: Path, rel: str) -> None:
    """``rel``'s parent directories in ``layer_fs`` are not symlinks: a later entry of the
    layer may have replaced a deferred link's directory by one, which would lead out of it."""
    cur = layer_fs
    for p in rel.split("/")[:-1]:
        cur = cur / p
        if os.path.islink(cur):
            raise UnpackError(f"hardlink {rel[:80]!r} goes through a symlink in the layer")


def _taken_in_layer(layer_fs: Path, target_rel: str) -> bool:
    """True when an entry of the layer itself holds the target's place: something at
    ``target_rel``, or a non-directory (file, symlink, whiteout) or an opaque directory on
    its way. The extractor defers a link only while its target is absent from the layer, so
    such an entry came later than the link. Never follows a symlink in the layer."""
    cur = layer_fs
    parts = target_rel.split("/")
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode) or any(_has_xattr(cur, name) for name in _OPAQUE_NAMES):
            return True
    return os.path.lexists(cur / parts[-1])


def _has_xattr(path: Path, name: str) -> bool:
    try:
        return os.getxattr(path, name, follow_symlinks=False) == b"y"
    except OSError:
        return False


_OPAQUE_NAMES = (OVERLAY_OPAQUE, "user.overlay.opaque")


def copy_up_links(
    layer_fs: Path, deferred: Sequence[tuple[str, str]], lowers_top_first: Sequence[Path]
) -> None:
    """Make hardlinks to lower-layer files the way overlayfs would: copy the target up, then link.

    A target whose place a later entry of the same layer took (replaced, whited out, or under
    a directory replaced, whited out or made opaque) is not copied there: as with GNU tar on
    a flattened root, the link keeps the file the lower layer had, so that file is copied to
    the (first) link itself and further links to the same target share it. OS errors become
    :class:`UnpackError`.
    """
    placed: dict[str, Path] = {}
    for link_rel, target_rel in deferred:
        _no_symlink_parents(layer_fs, link_rel)
        link = layer_fs / link_rel
        try:
            src = placed.get(target_rel)
            if src is None:
                found = find_in_lowers(target_rel, lowers_top_first)
                if found is None:
                    raise UnpackError(f"hardlink target {target_rel[:80]!r} does not exist")
                low, lower_file = found
                if os.path.lexists(link):
                    os.unlink(link)
                if _taken_in_layer(layer_fs, target_rel):
                    _copy_up(lower_file, link)
                    placed[target_rel] = link
                    continue
                _make_parents(layer_fs, low, target_rel)
                src = layer_fs / target_rel
                _copy_up(lower_file, src)
                placed[target_rel] = src
            elif os.path.lexists(link):
                os.unlink(link)
            os.link(src, link, follow_symlinks=False)
        except OSError as exc:
            msg = f"cannot make hardlink {link_rel[:80]!r} to {target_rel[:80]!r}: {exc.strerror or exc}"
            raise UnpackError(msg) from exc
