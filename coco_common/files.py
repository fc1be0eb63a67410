"""Files at the edge: bounded reads of untrusted files and atomic replacement.

:func:`read_bounded` reads a regular file but never more than its limit (one
byte over is enough to know), so a config path pointed at ``/dev/zero`` or a
huge log is refused rather than read. :func:`write_atomic` replaces a file so
that a reader sees the old content or the new, never a half-written one, and a
crash leaves no stray copy of the data: the temporary file is created
exclusively and without following links (a planted link cannot redirect the
write), flushed, renamed over the target, and the directory flushed."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["FileTooLarge", "read_bounded", "write_atomic"]


class FileTooLarge(ValueError):
    """The file holds more than the caller's limit."""

    def __init__(self, path: str | os.PathLike[str], limit: int) -> None:
        super().__init__(f"{os.fspath(path)} is larger than {limit} bytes")
        self.path = os.fspath(path)
        self.limit = limit


def read_bounded(path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes.

    Raises :class:`FileTooLarge` when there is more, :class:`ValueError` when
    ``path`` is not a regular file (a FIFO or a device would block or never end),
    and :class:`OSError` as ``open`` does (``ELOOP`` for a link when
    ``follow_symlinks`` is false)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileTooLarge(path, limit)
    return data


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` (permissions ``mode``) all at once.

    The temporary file ``.<name>.<random>`` in the same directory is opened with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``; on any failure it is removed, so neither a
    partial ``path`` nor a stray copy of ``data`` remains. ``fsync=False`` skips
    the flushes (for caches whose loss costs only a refetch)."""
    target = Path(path)
    # os.urandom, not secrets.token_hex (the same bytes): secrets pulls in random,
    # hmac and bisect, which every daemon importing this module would carry idle
    tmp = target.with_name(f".{target.name}.{os.urandom(8).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
