"""Resolve paths inside an unpack root without ever leaving it.

:class:`RootDir` holds a descriptor of the root directory and resolves
*directory* paths below it the way a chroot would: ``..`` stops at the root,
absolute symlinks restart at the root, and nothing outside it is ever opened.
Callers then operate on the final component with ``*at`` calls relative to the
returned directory descriptor and never follow a symlink there.

Two resolvers with identical semantics:

* ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` (Linux >= 5.6) through
  ``ctypes``: the kernel does the confinement atomically;
* a userspace walk, one ``openat(O_PATH | O_NOFOLLOW)`` per component starting
  at the root descriptor, expanding symlinks by reading them and continuing
  from a descriptor we already hold (so even a concurrent rename cannot move
  the walk outside the root).  It is used when openat2 is unavailable and to
  create missing parent directories.

Resolved descriptors are cached (bounded LRU); :meth:`RootDir.invalidate`
drops the cache whenever the unpacker removes or replaces a directory or a
symlink, since that can change what a cached path means.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable

from .errors import NO_SPACE_ERRNOS, EntryConflict, PathEscape, describe_name, no_space

__all__ = ["RootDir", "clean_path", "openat2_available"]

_O_PATH = getattr(os, "O_PATH", 0o10000000)
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "s390x": 437, "ppc64le": 437, "riscv64": 437}
_MAX_SYMLINKS = 40


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class _Openat2:
    def __init__(self) -> None:
        self.syscall: Callable[..., int] | None = None
        self.nr = _SYS_OPENAT2.get(os.uname().machine, -1)
        if self.nr < 0:
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
        except (OSError, AttributeError):
            return
        fn.restype = ctypes.c_long
        self.syscall = fn

    def open_dir(self, dirfd: int, path: bytes) -> int:
        """openat2 in root; returns fd, or raises OSError (ENOSYS when unusable)."""
        if self.syscall is None:
            raise OSError(errno.ENOSYS, "openat2 unavailable")
        how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = self.syscall(
            ctypes.c_long(self.nr),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG):
                self.syscall = None  # seccomp or old kernel: use the walk from now on
                raise OSError(errno.ENOSYS, "openat2 unavailable")
            raise OSError(err, os.strerror(err))
        return int(fd)


_OPENAT2 = _Openat2()


def openat2_available() -> bool:
    """True when the kernel accepts openat2 with RESOLVE_IN_ROOT here."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        os.close(_OPENAT2.open_dir(fd, b"."))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def clean_path(untrusted_name: bytes) -> bytes:
    """Lexically clean an archive name as ``filepath.Clean("/" + name)`` minus the slash.

    ``..`` cannot climb above the root; the empty result means the root itself.
    """
    name = untrusted_name
    if name[:2] == b"./":
        name = name[2:]
    if name[-1:] == b"/":
        name = name.rstrip(b"/")
    split = name.split(b"/")
    if b"" not in split and b"." not in split and b".." not in split:
        return name  # already clean (the common case)
    parts: list[bytes] = []
    for comp in split:
        if comp == b"" or comp == b".":
            continue
        if comp == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return b"/".join(parts)


class RootDir:
    """A directory that every path is confined to."""

    def __init__(
        self,
        root: os.PathLike[str] | str,
        *,
        use_openat2: bool = True,
        cache_size: int = 128,
        on_mkdir: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.ino = st.st_ino
        self._use_openat2 = use_openat2
        self._cache: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        self._cache_size = max(cache_size, 4)
        self.on_mkdir = on_mkdir
        self._retired: list[int] = []
        self.uses_openat2 = False
        self.generation = 0
        """Counts :meth:`invalidate` calls: what a caller cached about directories is stale
        once it changes."""

    def close(self) -> None:
        self.invalidate()
        self.release()
        os.close(self.fd)

    def invalidate(self) -> None:
        """Forget every cached directory descriptor.

        Descriptors already handed out stay open (they still name the same
        directories) until :meth:`release`, so a caller may finish the
        operation it is in the middle of.
        """
        self._retired.extend(fd for fd, _ino in self._cache.values())
        self._cache.clear()
        self.generation += 1

    def release(self) -> None:
        """Close descriptors retired by :meth:`invalidate` (call between entries)."""
        while self._retired:
            os.close(self._retired.pop())

    def directory(self, path: bytes, *, create: bool) -> tuple[int, int]:
        """Return ``(fd, inode)`` of the directory at clean relative ``path`` (b"" = root).

        With ``create``, missing directories are made (mode 0755).  The fd
        belongs to the cache: do not close it, and do not keep it across a
        call that may invalidate the cache.
        """
        if not path:
            return self.fd, self.ino
        hit = self._cache.get(path)
        if hit is not None:
            self._cache.move_to_end(path)
            return hit
        fd = -1
        if self._use_openat2 and _OPENAT2.syscall is not None:
            try:
                fd = _OPENAT2.open_dir(self.fd, path)
                self.uses_openat2 = True
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PathEscape(f"too many levels of symbolic links in {describe_name(path)}") from exc
                if exc.errno == errno.ENOENT and not create:
                    raise EntryConflict(f"directory {describe_name(path)} does not exist") from exc
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EAGAIN, errno.ENOSYS, errno.EXDEV):
                    raise EntryConflict(
                        f"cannot open directory {describe_name(path)}: {exc.strerror}"
                    ) from exc
                fd = -1
        if fd < 0:
            fd = self._walk(path, create)
        ino = os.fstat(fd).st_ino
        self._cache[path] = (fd, ino)
        if len(self._cache) > self._cache_size:
            _old, (ofd, _oino) = self._cache.popitem(last=False)
            self._retired.append(ofd)
        return fd, ino

    def _walk(self, path: bytes, create: bool) -> int:
        todo = path.split(b"/")
        todo.reverse()
        stack: list[int] = []  # fds we own, one per component below the root
        links = 0

        def top() -> int:
            return stack[-1] if stack else self.fd

        try:
            while todo:
                comp = todo.pop()
                if comp in (b"", b"."):
                    continue
                if comp == b"..":
                    if stack:
                        os.close(stack.pop())
                    continue
                parent = top()
                try:
                    fd = os.open(comp, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                except FileNotFoundError as exc:
                    if not create:
                        raise EntryConflict(f"directory {describe_name(path)} does not exist") from exc
                    try:
                        os.mkdir(comp, 0o755, dir_fd=parent)
                    except FileExistsError:
                        todo.append(comp)  # raced with ourselves? look again
                        continue
                    except OSError as exc:
                        if exc.errno in NO_SPACE_ERRNOS:
                            raise no_space(exc, f"directory {describe_name(path)}") from exc
                        raise EntryConflict(
                            f"cannot create directory in {describe_name(path)}: {exc.strerror}"
                        ) from exc
                    fd = os.open(comp, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                    if self.on_mkdir is not None:
                        self.on_mkdir(parent, os.fstat(parent).st_ino, comp)
                except OSError as exc:
                    raise EntryConflict(f"cannot open {describe_name(path)}: {exc.strerror}") from exc
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(fd)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.close(fd)
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise PathEscape(f"too many levels of symbolic links in {describe_name(path)}")
                    target = os.readlink(comp, dir_fd=parent)
                    if target.startswith(b"/"):
                        while stack:
                            os.close(stack.pop())
                    parts = target.split(b"/")
                    parts.reverse()
                    todo.extend(parts)
                    continue
                os.close(fd)
                raise EntryConflict(f"a parent of {describe_name(path)} is not a directory")
            if not stack:
                return os.dup(self.fd)
            result = stack.pop()
            return result
        finally:
            for fd in stack:
                os.close(fd)
