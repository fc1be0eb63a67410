"""Typed unpack errors: a full destination, a missing hardlink target, causes kept."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_pull import errors as pull_errors
from image_pull.unpack import (
    EntryConflict,
    InsufficientSpace,
    LimitExceeded,
    MissingHardlinkTarget,
    UnpackError,
    UnpackOptions,
    UnpackStats,
    unpack_layer,
)

from .tarbuild import Tar

IS_ROOT = os.geteuid() == 0


def unpack(data: bytes, dest: Path, **opts: object) -> UnpackStats:
    dest.mkdir(parents=True, exist_ok=True)
    return unpack_layer(io.BytesIO(data), dest, options=UnpackOptions(**opts))  # type: ignore[arg-type]


@contextlib.contextmanager
def small_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if cp.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {cp.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_error_tree() -> None:
    assert issubclass(MissingHardlinkTarget, EntryConflict)
    assert issubclass(MissingHardlinkTarget, UnpackError)
    assert InsufficientSpace is pull_errors.InsufficientSpace  # one class for a full disk
    assert issubclass(InsufficientSpace, pull_errors.StoreError)


def test_missing_hardlink_target_is_typed(tmp_path: Path) -> None:
    with pytest.raises(MissingHardlinkTarget, match="does not exist") as info:
        unpack(bytes(Tar().file("a").hardlink("h", "/lower/../lower/x")), tmp_path / "a")
    assert info.value.target == b"lower/x"  # clean, relative to DEST
    assert isinstance(info.value.__cause__, (EntryConflict, FileNotFoundError))
    with pytest.raises(MissingHardlinkTarget) as info:
        unpack(bytes(Tar().dir("d").hardlink("h", "d/gone")), tmp_path / "b")
    assert info.value.target == b"d/gone"
    assert isinstance(info.value.__cause__, FileNotFoundError)
    # not a missing target: a directory cannot be linked
    with pytest.raises(EntryConflict, match="directory") as other:
        unpack(bytes(Tar().dir("d").hardlink("h", "d")), tmp_path / "c")
    assert not isinstance(other.value, MissingHardlinkTarget)
    assert isinstance(other.value.__cause__, OSError)


def test_expansion_ratio_keeps_its_cause(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    bomb = bytes(Tar().file("zeros", bytes(1 << 20)))
    with pytest.raises(LimitExceeded, match="expands beyond 1000x") as info:
        unpack_layer(
            io.BytesIO(bomb),
            tmp_path / "e",
            options=UnpackOptions(max_expansion_ratio=1000),
            compressed_size=1000,
        )
    assert isinstance(info.value.__cause__, LimitExceeded)
    # the absolute cap (not the ratio) keeps its own message
    with pytest.raises(LimitExceeded, match="larger than the limit of 4096") as info:
        unpack_layer(
            io.BytesIO(bomb),
            tmp_path / "e",
            options=UnpackOptions(max_total_bytes=4096, max_expansion_ratio=1000),
            compressed_size=1000,
        )


@pytest.mark.skipif(not IS_ROOT, reason="needs root: mounts a small tmpfs")
def test_full_destination_is_insufficient_space(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", "size=1m") as dest:
        with pytest.raises(InsufficientSpace, match="no space") as info:
            unpack(bytes(Tar().file("big", os.urandom(2 << 20))), dest)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC


@pytest.mark.skipif(not IS_ROOT, reason="needs root: mounts a tmpfs with few inodes")
@pytest.mark.parametrize("kind", ["file", "dir", "parent"])
def test_no_free_inodes_is_insufficient_space(tmp_path: Path, kind: str) -> None:
    t = Tar()
    for i in range(40):
        if kind == "file":
            t.file(f"f{i}", b"x")
        elif kind == "dir":
            t.dir(f"d{i}")
        else:
            t.file(f"p{i}/f", b"x")  # the parent is created on the way
    with small_tmpfs(tmp_path / "inodes", "size=4m,nr_inodes=16") as dest:
        with pytest.raises(InsufficientSpace, match="no free inodes") as info:
            unpack(bytes(t), dest)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
