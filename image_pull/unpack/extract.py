"""Apply one OCI layer (a tar changeset) to a directory, confined to it.

Semantics (image-spec ``layer.md``; umoci and containerd where the spec is
silent):

* names are cleaned as ``clean("/" + name)``: absolute names and ``..`` stay
  inside DEST; an entry naming DEST itself may only be a directory and then
  only updates DEST's metadata;
* parents are resolved inside DEST, symlinks included (chroot semantics), and
  created (0755) when missing; the last component is never followed: an
  existing non-directory, or a directory when the entry is not one, is
  removed and recreated; directory onto directory keeps the directory;
* hardlink targets resolve inside DEST and must exist (earlier in this layer
  or, when flattening, in a lower layer); a deferred link (target in a lower
  layer, overlay form) that a later entry replaces, or whose directory a later
  entry replaces or removes, is dropped, as GNU tar would remove the link it
  had made (it is not brought back by a directory of that name made later);
* overlay form (default): ``.wh.<name>`` becomes a 0:0 character device
  (mode 0), ``.wh..wh..opq`` sets ``<prefix>opaque=y`` on its directory;
  flattened form: the whiteout deletes ``<name>``, the opaque marker deletes
  every child of its directory, except what this layer itself writes (in any
  order), so entries of a layer are never hidden by that layer's whiteouts;
  in overlay form a directory of the layer's own that meets its whiteout
  (before or after) is made opaque instead, so the merged view equals the
  flattened one;
* metadata order: owner, mode (setuid after chown), xattrs, times; directory
  times are applied after the last entry;
* xattrs that would plant overlay metadata (``trusted.overlay.*``,
  ``user.overlay.*``) or that umoci refuses (``security.selinux``,
  ``system.nfs4_acl``) are skipped and counted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .confine import RootDir, clean_path
from .errors import (
    NO_SPACE_ERRNOS,
    EntryConflict,
    ForbiddenEntry,
    InsufficientSpace,
    LimitExceeded,
    MissingHardlinkTarget,
    PathEscape,
    UnpackError,
    describe_name,
    no_space,
)
from .tarstream import EntryType, ReaderLimits, TarEntry, TarReader

__all__ = ["UnpackOptions", "UnpackStats", "unpack_layer"]

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"
_META_PREFIX = b".wh..wh."
_SKIPPED_XATTRS = frozenset({"security.selinux", "system.nfs4_acl"})
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_MAX_PRUNE_DEPTH = 4096
_REVIVED = TarEntry(
    b"(whiteout replaced by a directory)", EntryType.DIRECTORY, 0, 0, 0, 0, None, 0, 0, b"", 0, 0, (), None, 0
)


def _default_preserve_owner() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class UnpackOptions:
    """How to unpack a layer. Limits apply per layer."""

    flatten: bool = False
    """False: overlay form (whiteouts as 0:0 char devices, opaque xattr). True: apply deletions."""
    allow_devices: bool = True
    """Create char/block device entries (whiteout devices in overlay form are always made)."""
    preserve_owner: bool = field(default_factory=_default_preserve_owner)
    """chown entries to their uid/gid (default: when running as root)."""
    xattrs: bool = True
    """Restore xattrs from the archive (unsupported/forbidden ones are skipped and counted)."""
    overlay_xattr_prefix: str = "trusted.overlay."
    """Prefix for the opaque marker: ``trusted.overlay.`` or ``user.overlay.`` (userxattr mounts)."""
    max_entries: int = 1_000_000
    max_total_bytes: int = 64 << 30
    """Limit on the uncompressed archive and on the sum of file sizes written."""
    max_expansion_ratio: float = 1100.0
    """Uncompressed bytes per compressed byte (checked when compressed_size is given)."""
    max_path_length: int = 4096
    max_component_length: int = 255
    max_xattr_value: int = 1 << 16
    max_meta_bytes: int = 1 << 20
    """Pax / GNU long-name records attached to one entry."""
    require_end_marker: bool = False
    """Refuse archives that stop at an entry boundary without the two zero blocks."""
    use_openat2: bool = True
    """Use openat2(RESOLVE_IN_ROOT) when the kernel has it (the fd walk otherwise)."""
    defer_missing_hardlinks: bool = False
    """Record hardlinks whose target is not in DEST (in overlay form: it lives in a lower
    layer) in ``UnpackStats.deferred_hardlinks`` instead of failing; the caller copies the
    target up from the lowers and links it, as overlayfs would."""

    def __post_init__(self) -> None:
        if self.overlay_xattr_prefix not in ("trusted.overlay.", "user.overlay."):
            raise ValueError("overlay_xattr_prefix must be 'trusted.overlay.' or 'user.overlay.'")
        for name in ("max_entries", "max_total_bytes", "max_path_length", "max_component_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_expansion_ratio <= 0:
            raise ValueError("max_expansion_ratio must be positive")


@dataclass(frozen=True)
class UnpackStats:
    """What one unpack did."""

    entries: int
    files: int
    directories: int
    symlinks: int
    hardlinks: int
    devices: int
    fifos: int
    whiteouts: int
    opaque_dirs: int
    bytes_written: int
    """Sum of regular file sizes (logical size for sparse files)."""
    tar_bytes: int
    """Uncompressed archive bytes consumed (to the end of the stream)."""
    xattrs_skipped: int
    seconds: float
    deferred_hardlinks: tuple[tuple[bytes, bytes], ...] = ()
    """(link path, target path), both clean and relative to DEST, in archive order; only with
    ``defer_missing_hardlinks``. A target is never itself a deferred link (chains are followed)."""


class _Counts:
    __slots__ = (
        "bytes_written",
        "devices",
        "directories",
        "entries",
        "fifos",
        "files",
        "hardlinks",
        "opaque_dirs",
        "symlinks",
        "whiteouts",
        "xattrs_skipped",
    )

    def __init__(self) -> None:
        self.entries = self.files = self.directories = self.symlinks = self.hardlinks = 0
        self.devices = self.fifos = self.whiteouts = self.opaque_dirs = 0
        self.bytes_written = self.xattrs_skipped = 0


class _Unpacker:
    def __init__(self, root: RootDir, reader: TarReader, options: UnpackOptions) -> None:
        self.root = root
        self.reader = reader
        self.opts = options
        self.owner = options.preserve_owner
        umask = _process_umask()
        # mode bits that need an fchmod after creation (None: every file gets one)
        self.fchmod_bits = None if umask is None else 0o7000 | umask
        self.euid = os.geteuid()
        self.is_root = self.euid == 0
        self.egid = os.getegid()
        self.new_gids: dict[int, int] = {}  # parent inode -> gid a new file gets there
        self.new_gids_gen = -1
        self.written: set[tuple[int, bytes]] = set()
        self.dir_times: dict[bytes, tuple[int, int]] = {}
        self.dir_modes: dict[bytes, int] = {}
        self.deferred: dict[bytes, bytes] = {}
        self.deferred_at: dict[bytes, int] = {}  # link path -> entry number it was deferred at
        self.replaced: dict[bytes, int] = {}  # path -> last entry number that removed or replaced it
        self.whiteouts: set[bytes] = set()  # overlay form: whiteout devices made by this layer
        self.n = _Counts()

    # -- helpers -------------------------------------------------------------

    def mkdir_hook(self, _parent_fd: int, parent_ino: int, name: bytes) -> None:
        self.written.add((parent_ino, name))

    def _fail(
        self, entry: TarEntry, what: str, exc: OSError | None = None
    ) -> UnpackError | InsufficientSpace:
        """The typed error for ``entry`` (chain ``exc`` as its cause): by errno, else EntryConflict."""
        msg = f"entry {describe_name(entry.name)}: {what}"
        if exc is not None:
            if exc.errno == errno.ENAMETOOLONG:
                return LimitExceeded(f"entry {describe_name(entry.name)}: name too long for the filesystem")
            if exc.errno in NO_SPACE_ERRNOS:
                return no_space(exc, f"entry {describe_name(entry.name)}")
            msg += f" ({exc.strerror})"
        return EntryConflict(msg)

    def _make_room(self, pfd: int, name: bytes, keep_dir: bool) -> bool:
        """Clear ``name`` for a new entry; return True when an existing directory is kept."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._prune(pfd, name, keep_written=False)
        else:
            os.unlink(name, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self.root.invalidate()
        return False

    def _prune(self, pfd: int, name: bytes, *, keep_written: bool) -> bool:
        """Remove ``name`` (recursively, never following symlinks); return True if it is gone.

        With ``keep_written``, whatever this layer wrote survives, along with
        the directories that lead to it.
        """
        pino = os.fstat(pfd).st_ino
        if keep_written and (pino, name) in self.written:
            return False
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self.root.invalidate()
            return True
        kept = self._prune_children(pfd, name, st.st_ino, keep_written=keep_written)
        self.root.invalidate()
        if kept:
            return False
        os.rmdir(name, dir_fd=pfd)
        return True

    def _prune_children(self, pfd: int, name: bytes, ino: int, *, keep_written: bool) -> bool:
        """Remove the children of directory ``name``; return True if any were kept.

        Iterative post-order walk holding one descriptor per level.
        """
        stack: list[_Frame] = []
        try:
            stack.append(_Frame(os.open(name, _DIR_OPEN, dir_fd=pfd), ino, b""))
            while stack:
                frame = stack[-1]
                if not frame.pending:
                    stack.pop()
                    os.close(frame.fd)
                    if not stack:
                        return frame.kept
                    parent = stack[-1]
                    if frame.kept:
                        parent.kept = True
                    else:
                        os.rmdir(frame.name, dir_fd=parent.fd)
                    continue
                child = frame.pending.pop()
                if keep_written and (frame.ino, child) in self.written:
                    frame.kept = True
                    continue
                try:
                    cst = os.lstat(child, dir_fd=frame.fd)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(cst.st_mode):
                    if len(stack) >= _MAX_PRUNE_DEPTH:
                        raise LimitExceeded("directory tree too deep to remove")
                    stack.append(_Frame(os.open(child, _DIR_OPEN, dir_fd=frame.fd), cst.st_ino, child))
                else:
                    os.unlink(child, dir_fd=frame.fd)
            return False
        finally:
            for frame in stack:
                os.close(frame.fd)

    def _set_xattrs(self, target: int | bytes, entry: TarEntry, clear: bool) -> None:
        # Paths (symlinks, device nodes) are /proc/self/fd/<parent>/<name>: never follow the last part.
        follow = isinstance(target, int)
        if clear:
            try:
                existing = os.listxattr(target, follow_symlinks=follow)
            except OSError:
                existing = []
            wanted = {k for k, _v in entry.xattrs}
            for key in existing:
                if (
                    key not in wanted
                    and key not in _SKIPPED_XATTRS
                    and not key.startswith(_OVERLAY_XATTR_PREFIXES)
                ):
                    with contextlib.suppress(OSError):
                        os.removexattr(target, key, follow_symlinks=follow)
        for key, value in entry.xattrs:
            if key in _SKIPPED_XATTRS or key.startswith(_OVERLAY_XATTR_PREFIXES) or not self.opts.xattrs:
                self.n.xattrs_skipped += 1
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:
                denied = exc.errno in (errno.EPERM, errno.EACCES)
                if (
                    exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
                    or (denied and not self.is_root)
                    or (denied and not follow and key.startswith("user."))  # no user.* on symlinks/nodes
                ):
                    self.n.xattrs_skipped += 1
                    continue
                raise self._fail(entry, f"cannot set xattr {key!r}", exc) from exc

    def _chown(self, entry: TarEntry, fd: int | None, pfd: int, name: bytes) -> None:
        if not self.owner:
            return
        try:
            if fd is not None:
                os.fchown(fd, entry.uid, entry.gid)
            else:
                os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise self._fail(entry, "cannot set owner", exc) from exc

    def _new_gid(self, pfd: int, pino: int) -> int:
        """The group a file created in this directory gets: the directory's when it is
        set-group-ID, else ours. Cached per directory until a directory changes."""
        if self.new_gids_gen != self.root.generation:
            self.new_gids.clear()
            self.new_gids_gen = self.root.generation
        gid = self.new_gids.get(pino)
        if gid is None:
            st = os.fstat(pfd)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else self.egid
            self.new_gids[pino] = gid
        return gid

    @staticmethod
    def _times(entry: TarEntry) -> tuple[int, int]:
        return (entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns, entry.mtime_ns)

    # -- entry kinds -----------------------------------------------------------

    def regular(self, entry: TarEntry, pfd: int, pino: int, name: bytes) -> None:
        size = entry.real_size
        if self.n.bytes_written + size > self.opts.max_total_bytes:
            raise LimitExceeded(
                f"entry {describe_name(entry.name)}: layer writes more than {self.opts.max_total_bytes} bytes"
            )
        # Created with its final mode when the umask keeps it whole and no set-id/sticky bit
        # needs setting after the owner: one fchmod less per file.
        mode = entry.mode
        bits = self.fchmod_bits
        exact = bits is not None and not mode & bits
        create_mode = mode if exact else 0o600
        try:
            fd = os.open(name, _FILE_FLAGS, create_mode, dir_fd=pfd)
        except FileExistsError:
            self._make_room(pfd, name, keep_dir=False)
            try:
                fd = os.open(name, _FILE_FLAGS, create_mode, dir_fd=pfd)
            except OSError as exc:
                raise self._fail(entry, "cannot create file", exc) from exc
        except OSError as exc:
            raise self._fail(entry, "cannot create file", exc) from exc
        try:
            if entry.size or entry.sparse is not None:
                self.reader.copy_data(fd)
            if self.owner and (entry.uid != self.euid or entry.gid != self._new_gid(pfd, pino)):
                os.fchown(fd, entry.uid, entry.gid)
            if not exact:
                os.fchmod(fd, mode)
            if entry.xattrs:
                self._set_xattrs(fd, entry, clear=False)
            atime = entry.atime_ns
            os.utime(fd, ns=(entry.mtime_ns if atime is None else atime, entry.mtime_ns))
        except OSError as exc:
            raise self._fail(entry, "cannot write file", exc) from exc
        finally:
            os.close(fd)
        self.written.add((pino, name))
        self.n.files += 1
        self.n.bytes_written += size

    def directory(self, entry: TarEntry, path: bytes, pfd: int, pino: int, name: bytes) -> None:
        existed = False
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            existed = self._make_room(pfd, name, keep_dir=True)
            if not existed:
                try:
                    os.mkdir(name, 0o700, dir_fd=pfd)
                except OSError as exc:
                    raise self._fail(entry, "cannot create directory", exc) from exc
        except OSError as exc:
            raise self._fail(entry, "cannot create directory", exc) from exc
        try:
            dfd = os.open(name, _DIR_OPEN, dir_fd=pfd)
        except OSError as exc:
            raise self._fail(entry, "cannot open directory", exc) from exc
        try:
            self._dir_meta(entry, dfd, path, existed)
        finally:
            os.close(dfd)
        if self.whiteouts and path in self.whiteouts:
            self.whiteouts.discard(path)  # it replaced this layer's whiteout: keep hiding the lowers
            self._mark_opaque(entry, pfd, name)
        self.written.add((pino, name))
        self.n.directories += 1

    def _keep_times(self, path: bytes, dfd: int) -> None:
        """Restore this directory's times at the end (as umoci): changing a child is not a change of it."""
        st = os.fstat(dfd)
        self.dir_times[path] = (st.st_atime_ns, st.st_mtime_ns)

    def _dir_meta(self, entry: TarEntry, dfd: int, path: bytes, existed: bool) -> None:
        self.new_gids_gen = -1  # its owner or set-group-ID bit may change
        try:
            if self.owner:
                os.fchown(dfd, entry.uid, entry.gid)
            mode = entry.mode
            if not self.is_root and mode & 0o700 != 0o700:
                self.dir_modes[path] = mode
                mode |= 0o700
            os.fchmod(dfd, mode)
            if entry.xattrs or existed:
                self._set_xattrs(dfd, entry, clear=existed)
        except OSError as exc:
            raise self._fail(entry, "cannot set directory metadata", exc) from exc
        self.dir_times[path] = self._times(entry)

    def root_entry(self, entry: TarEntry) -> None:
        if entry.kind is not EntryType.DIRECTORY:
            raise PathEscape(f"entry {describe_name(entry.name)} would replace the root directory")
        self._dir_meta(entry, self.root.fd, b"", existed=True)

    def symlink(self, entry: TarEntry, pfd: int, pino: int, name: bytes) -> None:
        if not entry.linkname:
            raise self._fail(entry, "symlink with an empty target")
        try:
            os.symlink(entry.linkname, name, dir_fd=pfd)
        except FileExistsError:
            self._make_room(pfd, name, keep_dir=False)
            try:
                os.symlink(entry.linkname, name, dir_fd=pfd)
            except OSError as exc:
                raise self._fail(entry, "cannot create symlink", exc) from exc
        except OSError as exc:
            raise self._fail(entry, "cannot create symlink", exc) from exc
        self._chown(entry, None, pfd, name)
        try:
            if entry.xattrs:
                self._set_xattrs(b"/proc/self/fd/%d/%s" % (pfd, name), entry, clear=False)
            os.utime(name, ns=self._times(entry), dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise self._fail(entry, "cannot set symlink metadata", exc) from exc
        self.written.add((pino, name))
        self.n.symlinks += 1

    def hardlink(self, entry: TarEntry, path: bytes, pfd: int, pino: int, name: bytes) -> None:
        target = clean_path(entry.linkname)
        if not target:
            raise PathEscape(f"entry {describe_name(entry.name)}: hardlink to the root directory")
        tparent, _, tname = target.rpartition(b"/")
        try:
            tpfd, _tpino = self.root.directory(tparent, create=False)
        except EntryConflict as exc:
            if self._defer(path, pfd, name, target):
                return
            raise self._missing_target(entry, target) from exc
        if target == path:
            try:
                os.lstat(name, dir_fd=pfd)
            except FileNotFoundError as exc:
                raise self._fail(entry, "hardlink to itself") from exc
            self.written.add((pino, name))
            self.n.hardlinks += 1
            return
        for attempt in (0, 1):
            try:
                os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
                break
            except FileExistsError as exc:
                if attempt:
                    raise self._fail(entry, "cannot create hardlink", exc) from exc
                tst = os.lstat(tname, dir_fd=tpfd)
                st = os.lstat(name, dir_fd=pfd)
                if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                    break  # already that file
                self._make_room(pfd, name, keep_dir=False)
            except FileNotFoundError as exc:
                if self._defer(path, pfd, name, target):
                    return
                raise self._missing_target(entry, target) from exc
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    raise self._fail(entry, "hardlink target is a directory or not linkable") from exc
                raise self._fail(entry, "cannot create hardlink", exc) from exc
        self.written.add((pino, name))
        self.n.hardlinks += 1

    @staticmethod
    def _missing_target(entry: TarEntry, target: bytes) -> MissingHardlinkTarget:
        what = f"hardlink target {describe_name(entry.linkname)} does not exist"
        return MissingHardlinkTarget(f"entry {describe_name(entry.name)}: {what}", target)

    def _defer(self, path: bytes, pfd: int, name: bytes, target: bytes) -> bool:
        if not self.opts.defer_missing_hardlinks:
            return False
        self._make_room(pfd, name, keep_dir=False)
        self.deferred[path] = self.deferred.get(target, target)
        self.deferred_at[path] = self.n.entries
        self.n.hardlinks += 1
        return True

    def special(self, entry: TarEntry, pfd: int, pino: int, name: bytes) -> None:
        if entry.kind is EntryType.FIFO:
            fmt = stat.S_IFIFO
        else:
            if not self.opts.allow_devices:
                raise ForbiddenEntry(f"entry {describe_name(entry.name)}: device nodes are not allowed")
            fmt = stat.S_IFCHR if entry.kind is EntryType.CHAR else stat.S_IFBLK
        dev = os.makedev(entry.devmajor, entry.devminor) if fmt != stat.S_IFIFO else 0
        placeholder = False
        for attempt in (0, 1):
            try:
                os.mknod(name, fmt | 0o600, dev, dir_fd=pfd)
                break
            except FileExistsError as exc:
                if attempt:
                    raise self._fail(entry, "cannot create node", exc) from exc
                self._make_room(pfd, name, keep_dir=False)
            except PermissionError as exc:
                if self.is_root:
                    raise self._fail(entry, "cannot create node", exc) from exc
                # Rootless (as umoci): an empty regular file stands in for the node.
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
                os.close(fd)
                placeholder = True
                break
            except OSError as exc:
                raise self._fail(entry, "cannot create node", exc) from exc
        self._chown(entry, None, pfd, name)
        try:
            os.chmod(name, entry.mode, dir_fd=pfd)
            if entry.xattrs:
                self._set_xattrs(b"/proc/self/fd/%d/%s" % (pfd, name), entry, clear=False)
            os.utime(name, ns=self._times(entry), dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise self._fail(entry, "cannot set node metadata", exc) from exc
        self.written.add((pino, name))
        if fmt == stat.S_IFIFO:
            self.n.fifos += 1
        elif not placeholder:
            self.n.devices += 1
        else:
            self.n.files += 1

    def whiteout(self, entry: TarEntry, parent: bytes, name: bytes) -> None:
        if name in (b"", b".", b".."):
            raise ForbiddenEntry(f"entry {describe_name(entry.name)}: invalid whiteout")
        self.n.whiteouts += 1
        if self.opts.flatten:
            try:
                pfd, pino = self.root.directory(parent, create=False)
            except EntryConflict:
                return  # nothing below to hide
            if parent not in self.dir_times:
                self._keep_times(parent, pfd)
            # _prune keeps what this layer wrote: a directory of its own stays, emptied of
            # everything the lower layers had in it.
            if (pino, name) in self.written:
                try:
                    st = os.lstat(name, dir_fd=pfd)
                except FileNotFoundError:
                    return
                if stat.S_ISDIR(st.st_mode):
                    self._prune_children(pfd, name, st.st_ino, keep_written=True)
                    self.root.invalidate()
                return
            self._prune(pfd, name, keep_written=True)
            return
        pfd, pino = self.parent_dir(parent)
        if parent not in self.dir_times:
            self._keep_times(parent, pfd)
        if (pino, name) in self.written:
            # This layer's own entry wins over its whiteout; a directory of its own still
            # hides the lower one's contents, as flattening would.
            if stat.S_ISDIR(os.lstat(name, dir_fd=pfd).st_mode):
                self._mark_opaque(entry, pfd, name)
            return
        if not self._prune(pfd, name, keep_written=True):
            return
        try:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            os.chmod(name, 0, dir_fd=pfd)
        except PermissionError as exc:
            raise ForbiddenEntry(
                f"entry {describe_name(entry.name)}: whiteout devices need CAP_MKNOD; unpack with flatten"
            ) from exc
        except OSError as exc:
            raise self._fail(entry, "cannot create whiteout", exc) from exc
        self.whiteouts.add(parent + b"/" + name if parent else name)

    def opaque(self, entry: TarEntry, parent: bytes) -> None:
        self.n.opaque_dirs += 1
        if self.opts.flatten:
            try:
                dfd, _dino = self.root.directory(parent, create=False)
            except EntryConflict:
                return
            if parent not in self.dir_times:
                self._keep_times(parent, dfd)
            self._prune_children(dfd, b".", os.fstat(dfd).st_ino, keep_written=True)
            self.root.invalidate()
            return
        pfd, _ = self.parent_dir(parent)
        self._mark_opaque(entry, pfd, b".")

    def _mark_opaque(self, entry: TarEntry, pfd: int, name: bytes) -> None:
        fd = os.open(name, _DIR_OPEN, dir_fd=pfd)
        try:
            os.setxattr(fd, self.opts.overlay_xattr_prefix + "opaque", b"y")
        except PermissionError as exc:
            raise ForbiddenEntry(
                f"entry {describe_name(entry.name)}: opaque directories need CAP_SYS_ADMIN for "
                "trusted.overlay.*; use overlay_xattr_prefix='user.overlay.' (userxattr mounts) or flatten"
            ) from exc
        except OSError as exc:
            raise self._fail(entry, "cannot mark the directory opaque", exc) from exc
        finally:
            os.close(fd)

    def parent_dir(self, parent: bytes) -> tuple[int, int]:
        """Resolve (creating) a parent directory; in overlay form a whiteout this layer made
        on the way is turned back into a directory, opaque so that it still hides the lowers
        (a layer's own entries are never hidden by its whiteouts)."""
        try:
            return self.root.directory(parent, create=True)
        except EntryConflict:
            if not self.whiteouts:
                raise
        parts = parent.split(b"/")
        revived = False
        for i in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:i])
            if prefix in self.whiteouts:
                self.whiteouts.discard(prefix)
                up, _, name = prefix.rpartition(b"/")
                upfd, upino = self.root.directory(up, create=True)
                self.written.add((upino, name))
                st = os.lstat(name, dir_fd=upfd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    os.unlink(name, dir_fd=upfd)
                    os.mkdir(name, 0o755, dir_fd=upfd)
                    self.root.invalidate()
                    self._mark_opaque(_REVIVED, upfd, name)
                    revived = True
        if not revived:
            raise EntryConflict(f"a parent of {describe_name(parent)} is not a directory")
        return self.root.directory(parent, create=True)

    # -- main loop -------------------------------------------------------------

    def run(self) -> None:
        opts = self.opts
        root = self.root
        n = self.n
        max_path = opts.max_path_length
        max_comp = opts.max_component_length
        reader = self.reader
        while True:
            entry = reader.next()
            if entry is None:
                break
            root.release()
            n.entries += 1
            if n.entries > opts.max_entries:
                raise LimitExceeded(f"layer has more than {opts.max_entries} entries")
            path = clean_path(entry.name)
            if len(path) > max_path:
                raise LimitExceeded(f"entry {describe_name(entry.name)}: path longer than {max_path} bytes")
            parent, _, name = path.rpartition(b"/")
            if len(path) > max_comp and max(len(c) for c in path.split(b"/")) > max_comp:
                raise LimitExceeded(
                    f"entry {describe_name(entry.name)}: path component longer than {max_comp}"
                )
            if _META_PREFIX in path:
                if name == _OPAQUE:
                    self.opaque(entry, parent)
                    continue
                if any(c.startswith(_META_PREFIX) for c in path.split(b"/")):
                    continue  # aufs metadata (.wh..wh.plnk, ...): never extracted
            if name.startswith(_WHITEOUT):
                self.whiteout(entry, parent, name[4:])
                if self.deferred:
                    self._whited_out((parent + b"/" if parent else b"") + name[4:])
                continue
            if not path:
                self.root_entry(entry)
                continue
            kind = entry.kind
            if self.deferred:
                self.deferred.pop(path, None)  # a later entry replaces a deferred link
                if kind is not EntryType.DIRECTORY:  # ... or the directory that holds some
                    self.replaced[path] = n.entries
            pfd, pino = self.parent_dir(parent)
            if parent not in self.dir_times:
                self._keep_times(parent, pfd)
            if kind is EntryType.REGULAR:
                self.regular(entry, pfd, pino, name)
            elif kind is EntryType.DIRECTORY:
                self.directory(entry, path, pfd, pino, name)
            elif kind is EntryType.SYMLINK:
                self.symlink(entry, pfd, pino, name)
            elif kind is EntryType.HARDLINK:
                self.hardlink(entry, path, pfd, pino, name)
            else:
                self.special(entry, pfd, pino, name)
        reader.drain()
        root.release()
        self._finish_dirs()
        if self.deferred:
            self._drop_orphaned_links()

    def _whited_out(self, path: bytes) -> None:
        """After a whiteout of ``path``: a deferred link there is gone, and so are those under
        it when the directory went (a directory this layer made itself survives its whiteout)."""
        self.deferred.pop(path, None)
        try:
            self.root.directory(path, create=False)
        except (EntryConflict, PathEscape):
            self.replaced[path] = self.n.entries

    def _drop_orphaned_links(self) -> None:
        """Forget deferred links whose directory a later entry of the layer removed or replaced
        (by a file, a link, a node or a whiteout): GNU tar, and umoci on a flattened rootfs,
        make the link at once and then remove it with its directory, so it never reaches the
        result, even when a yet later entry makes a directory of that name again."""
        replaced = self.replaced
        for link in list(self.deferred):
            at = self.deferred_at[link]
            parts = link.split(b"/")
            if any(replaced.get(b"/".join(parts[:i]), -1) > at for i in range(1, len(parts))):
                del self.deferred[link]
                continue
            try:  # whatever else took the directory away (a flattened whiteout of a lower one)
                self.root.directory(link.rpartition(b"/")[0], create=False)
            except (EntryConflict, PathEscape):
                del self.deferred[link]
        self.root.release()

    def _finish_dirs(self) -> None:
        for path, mode in self.dir_modes.items():
            pfd_name = self._find_dir(path)
            if pfd_name is not None:
                os.chmod(pfd_name[1], mode, dir_fd=pfd_name[0])
        for path, times in self.dir_times.items():
            pfd_name = self._find_dir(path)
            if pfd_name is not None:
                os.utime(pfd_name[1], ns=times, dir_fd=pfd_name[0], follow_symlinks=False)

    def _find_dir(self, path: bytes) -> tuple[int, bytes] | None:
        """(parent fd, name) of the directory at ``path`` if it still is one."""
        if not path:
            return self.root.fd, b"."
        parent, _, name = path.rpartition(b"/")
        try:
            pfd, _ = self.root.directory(parent, create=False)
            st = os.lstat(name, dir_fd=pfd)
        except (EntryConflict, PathEscape, FileNotFoundError):
            return None  # removed or replaced later in the layer
        return (pfd, name) if stat.S_ISDIR(st.st_mode) else None


class _Frame:
    __slots__ = ("fd", "ino", "kept", "name", "pending")

    def __init__(self, fd: int, ino: int, name: bytes) -> None:
        self.fd = fd
        self.ino = ino
        self.name = name
        self.pending = [os.fsencode(x) for x in os.listdir(fd)]
        self.kept = False


def _process_umask() -> int | None:
    """The process umask, read without changing it (``os.umask`` would, racing other threads);
    None when ``/proc`` does not say (every file then gets an explicit fchmod)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def unpack_layer(
    untrusted_tar: BinaryIO,
    dest: Path,
    *,
    options: UnpackOptions = UnpackOptions(),
    compressed_size: int | None = None,
) -> UnpackStats:
    """Unpack the (already decompressed) tar stream ``untrusted_tar`` into ``dest``.

    Reads sequentially (never seeks) to the end of the stream, so a hashing
    wrapper around it sees every byte. ``dest`` must be an existing directory.
    With ``compressed_size`` the expansion-ratio limit is enforced. On error
    ``dest`` may hold a partial tree: the caller removes it. Raises
    :class:`UnpackError` subclasses, or :class:`InsufficientSpace` when the
    destination is full or over quota (ENOSPC/EDQUOT); OS errors are translated,
    with the ``OSError`` kept as the cause.
    """
    started = time.monotonic()
    cap = options.max_total_bytes
    if compressed_size is not None and compressed_size >= 0:
        cap = min(cap, int(max(compressed_size, 1) * options.max_expansion_ratio))
    limits = ReaderLimits(
        max_meta_bytes=options.max_meta_bytes,
        max_name_length=options.max_path_length,
        max_xattr_value=options.max_xattr_value,
        max_stream_bytes=cap,
    )
    reader = TarReader(untrusted_tar, limits=limits, require_end_marker=options.require_end_marker)
    try:
        root_dir = RootDir(dest, use_openat2=options.use_openat2)
    except OSError as exc:
        raise UnpackError(f"cannot open destination directory: {exc.strerror}") from exc
    unpacker = _Unpacker(root_dir, reader, options)
    root_dir.on_mkdir = unpacker.mkdir_hook
    try:
        unpacker.run()
    except LimitExceeded as exc:
        if cap < options.max_total_bytes and reader.bytes_read > cap:  # the ratio cap, not the size cap
            ratio = f"{options.max_expansion_ratio:g}"
            msg = f"layer expands beyond {ratio}x its compressed size of {compressed_size} bytes"
            raise LimitExceeded(msg) from exc
        raise
    except (UnpackError, InsufficientSpace):
        raise
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise no_space(exc) from exc
        raise UnpackError(f"unpack failed: {exc.strerror or exc}") from exc
    finally:
        root_dir.close()
    n = unpacker.n
    return UnpackStats(
        entries=n.entries,
        files=n.files,
        directories=n.directories,
        symlinks=n.symlinks,
        hardlinks=n.hardlinks,
        devices=n.devices,
        fifos=n.fifos,
        whiteouts=n.whiteouts,
        opaque_dirs=n.opaque_dirs,
        bytes_written=n.bytes_written,
        tar_bytes=reader.position,
        xattrs_skipped=n.xattrs_skipped,
        seconds=time.monotonic() - started,
        deferred_hardlinks=tuple(unpacker.deferred.items()),
    )
