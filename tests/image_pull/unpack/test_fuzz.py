"""Bounded fuzzing (hypothesis) of the tar reader and the unpacker.

Properties: on any input the reader and unpacker either succeed or raise an
``UnpackError`` subclass (never another exception, never a hang), and no
input changes anything outside DEST. The example counts keep the whole file
around 20 s; raise ``COCO_FUZZ_SCALE`` (e.g. 20) for a longer local run.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_pull.unpack import (
    ReaderLimits,
    TarReader,
    UnpackError,
    UnpackOptions,
    clean_path,
    open_decompressed,
    unpack_layer,
)

from .tarbuild import Tar, snapshot

SCALE = float(os.environ.get("COCO_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=int(400 * SCALE),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

COMPONENTS = st.sampled_from(["a", "b", "..", ".", "", "l", ".wh.a", ".wh..wh..opq", ".wh.l", "d", "x" * 30])
NAMES = st.lists(COMPONENTS, min_size=1, max_size=5).map("/".join)
TARGETS = st.one_of(NAMES, NAMES.map(lambda n: "/" + n), st.just("{outside}"), st.just("../outside/victim"))

ENTRY = st.tuples(
    st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "char", "pax-path", "gnu-long"]),
    NAMES,
    TARGETS,
    st.binary(max_size=700),
    st.integers(0, 0o7777),
)


def build(entries: list[tuple[str, str, str, bytes, int]], outside: str) -> bytes:
    t = Tar()
    for kind, name, target, data, mode in entries:
        target = target.replace("{outside}", outside)
        if kind == "file":
            t.file(name, data, mode=mode)
        elif kind == "dir":
            t.dir(name, mode=mode | 0o700)
        elif kind == "symlink":
            t.symlink(name, target)
        elif kind == "hardlink":
            t.hardlink(name, target)
        elif kind == "fifo":
            t.add(name, b"6", mode=mode)
        elif kind == "char":
            t.add(name, b"3", devmajor=1, devminor=3, mode=mode)
        elif kind == "pax-path":
            t.pax({"path": name + "/" + target, "SCHILY.xattr.user.f": data[:50]}).file("short", data)
        else:
            t.gnu_long(name.encode() * 4).file("short", data)
    return bytes(t)


def _read_everything(data: bytes) -> None:
    r = TarReader(io.BytesIO(data), limits=ReaderLimits(max_meta_bytes=1 << 16, max_stream_bytes=1 << 22))
    for e in r:
        assert e.size >= 0 and e.real_size >= 0
        if e.sparse is None:
            r.read_data(1 << 22)
    r.drain()


@settings(FUZZ, max_examples=int(1500 * SCALE))
@given(st.binary(max_size=3000))
def test_reader_random_bytes(data: bytes) -> None:
    with contextlib.suppress(UnpackError):
        _read_everything(data)


@FUZZ
@given(
    st.lists(ENTRY, max_size=6), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
)
def test_reader_mutated_archives(
    entries: list[tuple[str, str, str, bytes, int]], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(build(entries, "/outside"))
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    cut = flips[0][0] % (len(data) + 1) if flips else len(data)
    with contextlib.suppress(UnpackError):
        _read_everything(bytes(data[:cut]))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b""]))
def test_decompress_garbage(data: bytes, magic: bytes) -> None:
    try:
        s = open_decompressed(io.BytesIO(magic + data))
        while s.read(4096):
            pass
    except UnpackError:
        pass


@settings(FUZZ, max_examples=int(300 * SCALE))
@given(st.lists(ENTRY, min_size=1, max_size=8), st.lists(ENTRY, max_size=4), st.booleans(), st.booleans())
def test_unpack_never_escapes(
    first: list[tuple[str, str, str, bytes, int]],
    second: list[tuple[str, str, str, bytes, int]],
    flatten: bool,
    walk: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        (outside / "sub").mkdir(parents=True)
        (outside / "victim").write_bytes(b"original")
        dest = base / "dest"
        dest.mkdir()
        before = snapshot(outside)
        opts = UnpackOptions(flatten=flatten, use_openat2=not walk)
        for layer in (first, second):
            with contextlib.suppress(UnpackError):
                unpack_layer(io.BytesIO(build(layer, str(outside))), dest, options=opts)
        assert snapshot(outside) == before
        assert sorted(os.listdir(base)) == ["dest", "outside"]
        assert os.path.isdir(dest) and not os.path.islink(dest)


@settings(FUZZ, max_examples=int(2000 * SCALE))
@given(st.lists(st.sampled_from([b"a", b"..", b".", b"", b"b.", b"..c", b"/"]), max_size=8).map(b"".join))
def test_clean_path_matches_posix_normpath(name: bytes) -> None:
    expect = posixpath.normpath(b"/" + name.lstrip(b"/")).lstrip(b"/")
    assert clean_path(name) == expect


MEMBER = st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), min_size=1, max_size=120),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=150),
    st.binary(max_size=1500),
    st.integers(0, 0o7777),
    st.integers(0, 2**21 - 1),
    st.integers(0, 2**33 - 1),
)


@settings(FUZZ, max_examples=int(200 * SCALE))
@given(st.lists(MEMBER, min_size=1, max_size=5), st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_reader_agrees_with_tarfile(
    members: list[tuple[bytes, str, str, bytes, int, int, int]], fmt: int
) -> None:
    """Differential: archives written by Python's tarfile read the same with our reader."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as t:
        for i, (kind, name, link, data, mode, uid, mtime) in enumerate(members):
            ti = tarfile.TarInfo(f"{i}/{name}")
            ti.type, ti.mode, ti.uid, ti.mtime = kind, mode, uid, mtime
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = link
            if kind == tarfile.REGTYPE:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    raw = buf.getvalue()
    theirs = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", encoding="utf-8") as t:
        for ti in t:
            body = t.extractfile(ti).read() if ti.isreg() else b""  # type: ignore[union-attr]
            theirs.append((ti.name.encode(), ti.mode, ti.uid, ti.mtime, ti.linkname.encode(), body))
    ours = []
    r = TarReader(io.BytesIO(raw))
    for e in r:
        ours.append(
            (e.name.rstrip(b"/"), e.mode, e.uid, e.mtime_ns // 10**9, e.linkname, r.read_data(1 << 20))
        )
    assert ours == theirs
