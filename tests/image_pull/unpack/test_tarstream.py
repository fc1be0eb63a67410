"""The streaming tar reader: dialects, extensions, strictness, no seeking."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from image_pull.unpack import (
    EntryType,
    LimitExceeded,
    MalformedTar,
    ReaderLimits,
    TarReader,
    UnsupportedEntry,
)

from .tarbuild import Tar, header, pad, pax_record


class Stream(io.RawIOBase):
    """Non-seekable stream that hands out at most ``chunk`` bytes per read."""

    def __init__(self, data: bytes, chunk: int = 1 << 30) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        n = min(n, self._chunk)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def seek(self, *a: object) -> int:
        raise AssertionError("reader must not seek")

    def tell(self) -> int:
        raise AssertionError("reader must not tell")


def entries(data: bytes, chunk: int = 1 << 30, **kw: object) -> list[tuple[object, bytes]]:
    r = TarReader(Stream(data, chunk), **kw)  # type: ignore[arg-type]
    out = []
    for e in r:
        body = r.read_data(1 << 24) if e.sparse is None else b""
        out.append((e, body))
    return out


@pytest.mark.parametrize("chunk", [1, 7, 512, 1 << 20])
def test_tarfile_pax_archive_any_read_size(chunk: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("d")
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o1777
        t.addfile(ti)
        ti = tarfile.TarInfo("d/" + "n" * 150)
        ti.size = 5
        ti.mode = 0o4755
        ti.uid, ti.gid = 1000, 2000
        ti.mtime = 1234567890.5
        ti.pax_headers = {"SCHILY.xattr.user.k": "v", "SCHILY.xattr.user.e": ""}
        t.addfile(ti, io.BytesIO(b"hello"))
        ti = tarfile.TarInfo("l")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "/" + "t" * 200
        t.addfile(ti)
    got = entries(buf.getvalue(), chunk)
    assert [e.kind for e, _ in got] == [EntryType.DIRECTORY, EntryType.REGULAR, EntryType.SYMLINK]  # type: ignore[attr-defined]
    d, (f, body), (s, _) = got[0][0], got[1], got[2]
    assert d.mode == 0o1777  # type: ignore[attr-defined]
    assert f.name == b"d/" + b"n" * 150 and body == b"hello"  # type: ignore[attr-defined]
    assert (f.mode, f.uid, f.gid) == (0o4755, 1000, 2000)  # type: ignore[attr-defined]
    assert f.mtime_ns == 1_234_567_890_500_000_000  # type: ignore[attr-defined]
    assert dict(f.xattrs) == {"user.k": b"v", "user.e": b""}  # type: ignore[attr-defined]
    assert s.linkname == b"/" + b"t" * 200  # type: ignore[attr-defined]


def test_ustar_prefix_gnu_longnames_and_base256() -> None:
    long = b"a/" * 60 + b"file"
    t = (
        Tar()
        .file(b"name", b"x", prefix=b"some/prefix")
        .gnu_long(long)
        .gnu_long(b"T" * 300, link=True)
        .add(b"trunc", b"2")
        .file(b"big-ids", b"", uid=2**40, gid=7)
    )
    got = entries(t.build())
    assert got[0][0].name == b"some/prefix/name"  # type: ignore[attr-defined]
    assert got[1][0].name == long and got[1][0].linkname == b"T" * 300  # type: ignore[attr-defined]
    assert got[2][0].uid == 2**40  # type: ignore[attr-defined]


def test_pax_precedence_global_and_empty_values() -> None:
    t = (
        Tar()
        .pax({"uid": "42", "SCHILY.xattr.user.g": "global"}, glob=True)
        .pax({"path": "from-pax", "uid": "", "mtime": "-1.25"})
        .file(b"from-header", b"abc", uid=7)
        .pax({"uid": ""}, glob=True)
        .file(b"second", b"", uid=9)
    )
    (first, body), (second, _) = entries(t.build())
    assert first.name == b"from-pax" and body == b"abc"  # type: ignore[attr-defined]
    assert first.uid == 7  # empty local value falls back to the header  # type: ignore[attr-defined]
    assert first.mtime_ns == -1_250_000_000  # type: ignore[attr-defined]
    assert dict(first.xattrs) == {"user.g": b"global"}  # type: ignore[attr-defined]
    assert second.uid == 9  # type: ignore[attr-defined]


def test_libarchive_xattrs_and_binary_values() -> None:
    cap = bytes.fromhex("0000000200200000000000000000000000000000")
    t = Tar().pax([("LIBARCHIVE.xattr.user.sp%20ace", "aGk"), ("SCHILY.xattr.security.capability", cap)])
    t.file(b"f", b"")
    ((e, _),) = entries(t.build())
    assert dict(e.xattrs) == {"user.sp ace": b"hi", "security.capability": cap}  # type: ignore[attr-defined]
    for bad in ("a", "aG!", "aGl", "aGk=="):  # impossible length, off-alphabet, trailing bits, padding
        t = Tar().pax([("LIBARCHIVE.xattr.user.x", bad)]).file(b"f", b"")
        with pytest.raises(MalformedTar, match="LIBARCHIVE"):
            entries(t.build())


def test_header_only_types_ignore_size_like_go() -> None:
    # A hardlink header claiming 512 bytes of data is followed directly by the next header.
    t = Tar().raw(header(b"h", b"1", linkname=b"x", size=512)).file(b"next", b"z")
    got = entries(t.build())
    assert [e.name for e, _ in got] == [b"h", b"next"]  # type: ignore[attr-defined]
    assert got[0][0].size == 0  # type: ignore[attr-defined]


def test_v7_regular_with_slash_is_directory() -> None:
    t = Tar().add(b"dir/", b"\x00")
    ((e, _),) = entries(t.build())
    assert e.kind is EntryType.DIRECTORY  # type: ignore[attr-defined]


def test_missing_end_marker_is_accepted_unless_required() -> None:
    data = Tar().file(b"a", b"123").build(end=False)
    assert [e.name for e, _ in entries(data)] == [b"a"]  # type: ignore[attr-defined]
    # umoci 0.4.7 insert: not even the padding of the last file
    unpadded = data[: 512 + 3]
    assert [b for _, b in entries(unpadded)] == [b"123"]
    with pytest.raises(MalformedTar, match="end-of-archive"):
        entries(data, require_end_marker=True)


@pytest.mark.parametrize(
    "data, match",
    [
        (Tar().file(b"a", b"123").build()[:514], "truncated in file data"),
        (Tar().file(b"a", b"123").build()[:100], "truncated in a header"),
        (Tar().raw(header(b"a", bad_checksum=True)).build(), "checksum"),
        (Tar().raw(header(b"a", raw_size=b"0000000001_1")).build(), "bad size"),
        (Tar().raw(header(b"a", raw_size=b"-0000000001\x00")).build(), "bad size"),
        (Tar().file(b"a").build() + b"\x01" + bytes(511), "after the end-of-archive"),
        (Tar().pax({"path": b"a\x00b"}).file(b"x").build(), "NUL"),
        (Tar().raw(header(b"p", b"x", size=5) + pad(b"9 a=b\n")).file(b"x").build(), "pax record"),
        (Tar().raw(header(b"p", b"x", size=6) + pad(b"99 a=b")).file(b"x").build(), "pax record"),
        (Tar().pax({"size": "12x"}).file(b"x").build(), "bad size"),
        (Tar().pax({"mtime": "1.x"}).file(b"x").build(), "pax time"),
        (Tar().pax({"uid": "1"}).build(), "extension header without"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(MalformedTar, match=match):
        r = TarReader(Stream(data))
        for _ in r:
            r.skip_data()
        r.drain()


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnsupportedEntry):
        entries(Tar().add(b"x", b"Z").build())


def test_limits() -> None:
    with pytest.raises(LimitExceeded):
        entries(Tar().pax({"path": "p" * 5000}).file(b"x").build(), limits=ReaderLimits(max_meta_bytes=1000))
    with pytest.raises(LimitExceeded):
        entries(Tar().pax({"path": "p" * 5000}).file(b"x").build(), limits=ReaderLimits(max_name_length=4096))
    with pytest.raises(LimitExceeded):
        entries(Tar().file(b"x", bytes(4096)).build(), limits=ReaderLimits(max_stream_bytes=2048))
    many = Tar().pax([(f"SCHILY.xattr.user.{i}", "v") for i in range(20)]).file(b"x").build()
    with pytest.raises(LimitExceeded):
        entries(many, limits=ReaderLimits(max_xattrs=10))


def test_pax_record_helper_lengths() -> None:
    for n in range(1, 300):
        rec = pax_record("k", "v" * n)
        length, _ = rec.split(b" ", 1)
        assert int(length) == len(rec)


def _read_sparse(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    r = TarReader(Stream(data, 4096))
    for e in r:
        if e.kind is EntryType.REGULAR:
            fd = os.memfd_create("sparse")
            try:
                r.copy_data(fd)
                os.lseek(fd, 0, os.SEEK_SET)
                size = os.fstat(fd).st_size
                assert size == e.real_size
                out[e.name] = os.read(fd, size + 1)
            finally:
                os.close(fd)
    return out


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_tar_sparse_formats(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    expect = bytearray(3 * 1024 * 1024 + 17)
    expect[5000:5010] = b"0123456789"
    expect[2 * 1024 * 1024 : 2 * 1024 * 1024 + 4] = b"tail"
    expect[-1] = 0x55
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(len(expect))
        for off, chunk in ((5000, b"0123456789"), (2 * 1024 * 1024, b"tail"), (len(expect) - 1, b"\x55")):
            f.seek(off)
            f.write(chunk)
    args = ["tar", "-C", str(src), "--sparse", "-cf", str(tmp_path / "s.tar")]
    if fmt == "gnu":
        args += ["--format=gnu"]
    else:
        args += ["--format=pax", f"--sparse-version={fmt[4:]}"]
    subprocess.run([*args, "sparse.bin"], check=True)
    got = _read_sparse((tmp_path / "s.tar").read_bytes())
    assert got == {b"sparse.bin": bytes(expect)}


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "pax-1.0"])
def test_gnu_tar_sparse_many_regions(tmp_path: Path, fmt: str) -> None:
    """More than 4 regions: GNU format needs extended sparse headers, pax 1.0 a multi-block map."""
    src = tmp_path / "src"
    src.mkdir()
    size = 200 * 65536
    expect = bytearray(size)
    with open(src / "many.bin", "wb") as f:
        f.truncate(size)
        for i in range(0, 200, 2):
            f.seek(i * 65536)
            f.write(b"r%03d" % i)
            expect[i * 65536 : i * 65536 + 4] = b"r%03d" % i
    args = ["tar", "-C", str(src), "--sparse", "-cf", str(tmp_path / "s.tar")]
    args += ["--format=gnu"] if fmt == "gnu" else ["--format=pax", "--sparse-version=1.0"]
    subprocess.run([*args, "many.bin"], check=True)
    assert _read_sparse((tmp_path / "s.tar").read_bytes()) == {b"many.bin": bytes(expect)}


def test_gnu_dumpdir_data_is_skipped() -> None:
    listing = b"Yfile\x00Ndir\x00\x00"
    t = Tar().add(b"incremental/", b"D", listing, gnu=True).file(b"after", b"ok")
    got = entries(t.build())
    assert [(e.name, e.kind) for e, _ in got] == [  # type: ignore[attr-defined]
        (b"incremental/", EntryType.DIRECTORY),
        (b"after", EntryType.REGULAR),
    ]
    assert got[1][1] == b"ok"


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_incremental_archive(tmp_path: Path) -> None:
    (tmp_path / "src/sub").mkdir(parents=True)
    (tmp_path / "src/sub/f").write_bytes(b"incremental")
    subprocess.run(
        [
            "tar",
            "-C",
            str(tmp_path / "src"),
            "--listed-incremental",
            str(tmp_path / "snar"),
            "-cf",
            str(tmp_path / "i.tar"),
            ".",
        ],
        check=True,
    )
    got = entries((tmp_path / "i.tar").read_bytes())
    assert (b"./sub/f", b"incremental") in [(e.name, b) for e, b in got]  # type: ignore[attr-defined]


def _with_checksum(blk: bytearray, value: int) -> bytes:
    blk[148:156] = b"%06o\x00 " % value
    return bytes(blk)


@pytest.mark.parametrize("seed", range(8))
def test_header_checksum_matches_the_byte_sum_exactly(seed: int) -> None:
    """Headers dense with high bytes (sums above 65521) are checked exactly: the stored sum
    must be the unsigned (or, as old tars wrote it, signed) byte sum, not one off by 65521."""
    import random

    from image_pull.unpack.tarstream import _verify_checksum

    rng = random.Random(seed)
    for dense in (0, 200, 300, 504):
        blk = bytearray(header(b"f"))
        for i in rng.sample([i for i in range(512) if not 148 <= i < 156], dense):
            blk[i] = rng.randrange(128, 256)
        blk[148:156] = b" " * 8
        unsigned = sum(blk)
        signed = unsigned - 256 * sum(1 for b in blk if b >= 128)
        _verify_checksum(_with_checksum(blk, unsigned), 0)
        if signed >= 0:
            _verify_checksum(_with_checksum(blk, signed), 0)
        for wrong in (unsigned + 1, unsigned - 65521, unsigned + 65521, unsigned - 1):
            if wrong < 0 or wrong == signed or wrong >= 8**6:
                continue
            with pytest.raises(MalformedTar, match="checksum"):
                _verify_checksum(_with_checksum(blk, wrong), 0)
    blk = bytearray(header(b"f"))
    for bad in (b"0000 8\x00 ", b"+01234\x00 ", b"0_1234\x00 ", b"        "):
        blk[148:156] = bad
        with pytest.raises(MalformedTar, match="checksum"):
            _verify_checksum(bytes(blk), 0)


@pytest.mark.parametrize(
    "data",
    [
        b"30 mtime=1765061069.601946355\n30 atime=1765061069.605946355\n",
        b"030 mtime=1765061069.60194635\n",  # zero-padded length
        b"19 comment=a\nb=c\n12 path=x=y\n",  # a value with a newline, and with '='
        b"11 path=ab\n",  # stated length one short
        b"13 path=ab\n",  # one long
        b"10 path=\n\x00\x00\x00",  # empty value, NUL padding
        b"9 path=a\n\x00",
        b"12 p\xffth=ab\n",  # not UTF-8
        b"12 pa\nh=ab\n",  # newline in the key
        b"11 path=ab\nx",
        b"",
    ],
)
def test_pax_fast_path_reads_what_the_record_parser_reads(data: bytes) -> None:
    from image_pull.unpack.tarstream import _parse_pax, _parse_pax_records

    try:
        expected: object = _parse_pax_records(data, 0)
    except MalformedTar as exc:
        expected = type(exc)
    try:
        got: object = _parse_pax(data, 0)
    except MalformedTar as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"1765061069.601946355", 1765061069_601946355),  # GNU tar's form (the fast path)
        (b"0.000000001", 1),
        (b"12345678901234567890.123456789", 12345678901234567890_123456789),  # 20 digits: the most
        (b"1765061069.6", 1765061069_600000000),
        (b"1765061069.1234567891", 1765061069_123456789),  # beyond ns: truncated
        (b"1765061069", 1765061069_000000000),
        (b"-1.500000000", -1_500000000),
        (b"123456789012345678901.123456789", MalformedTar),  # 21 digits
        (b"1.2.345678901", MalformedTar),
        (b"1 .123456789", MalformedTar),
        (b"+1.123456789", MalformedTar),
        (b"1_0.123456789", MalformedTar),
        (b"\xd9\xa1.123456789", MalformedTar),  # non-ASCII digit
        (b".123456789", MalformedTar),
    ],
)
def test_pax_time(value: bytes, expected: object) -> None:
    from image_pull.unpack.tarstream import _pax_time

    if expected is MalformedTar:
        with pytest.raises(MalformedTar):
            _pax_time(value, 0)
    else:
        assert _pax_time(value, 0) == expected
