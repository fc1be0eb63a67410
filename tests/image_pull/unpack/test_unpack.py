"""unpack_layer: changeset semantics in overlay and flattened form, metadata, limits."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from image_pull.errors import ImagePullError
from image_pull.unpack import (
    EntryConflict,
    ForbiddenEntry,
    LimitExceeded,
    PathEscape,
    UnpackError,
    UnpackOptions,
    UnpackStats,
    unpack_layer,
)

from .tarbuild import Tar, header, pad

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod, chown, trusted.* xattrs)")
CAP_V2 = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_bind_service, effective


def unpack(data: bytes, dest: Path, **opts: object) -> UnpackStats:
    dest.mkdir(parents=True, exist_ok=True)
    return unpack_layer(io.BytesIO(data), dest, options=UnpackOptions(**opts))  # type: ignore[arg-type]


def lmode(p: Path) -> int:
    return os.lstat(p).st_mode


def test_error_tree() -> None:
    assert issubclass(UnpackError, ImagePullError)
    for cls in (PathEscape, LimitExceeded, ForbiddenEntry, EntryConflict):
        assert issubclass(cls, UnpackError)


@needs_root
def test_overlay_form_full_metadata(tmp_path: Path) -> None:
    t = (
        Tar()
        .dir("./", mode=0o750, mtime=1_600_000_000)
        .dir("d", mode=0o2775, uid=10, gid=20, mtime=1_500_000_000)
        .pax({"mtime": "1500000000.123456789", "SCHILY.xattr.user.k": "v", "SCHILY.xattr.user.e": ""})
        .file("d/f", b"hello", mode=0o4755, uid=1000, gid=1001)
        .pax({"SCHILY.xattr.security.capability": CAP_V2})
        .file("d/cap", b"bin", mode=0o755, uid=0, gid=0)
        .pax({"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.security.selinux": "x"})
        .file("d/planted", b"")
        .hardlink("d/h", "d/f")
        .symlink("d/s", "/etc/passwd", uid=33, gid=44, mtime=1_400_000_000)
        .add("d/null", b"3", devmajor=1, devminor=3, mode=0o666)
        .add("d/loop", b"4", devmajor=7, devminor=0, mode=0o660, gid=6)
        .add("d/fifo", b"6", mode=0o600)
        .file("d/.wh.gone")
        .dir("tmp", mode=0o1777)
        .dir("o")
        .file("o/.wh..wh..opq")
        .file("o/kept", b"k")
    )
    dest = tmp_path / "l"
    stats = unpack(bytes(t), dest)
    assert (stats.files, stats.directories, stats.symlinks, stats.hardlinks) == (4, 3, 1, 1)
    assert (stats.devices, stats.fifos, stats.whiteouts, stats.opaque_dirs) == (2, 1, 1, 1)
    assert stats.xattrs_skipped == 2
    assert stats.tar_bytes == len(bytes(t))

    d = dest / "d"
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o2775 and (st.st_uid, st.st_gid) == (10, 20)
    assert st.st_mtime_ns == 1_500_000_000 * 10**9  # set after its children were written
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750
    assert os.stat(dest).st_mtime_ns == 1_600_000_000 * 10**9
    f = os.stat(d / "f")
    assert (d / "f").read_bytes() == b"hello"
    assert stat.S_IMODE(f.st_mode) == 0o4755 and (f.st_uid, f.st_gid) == (1000, 1001)
    assert f.st_mtime_ns == 1_500_000_000_123_456_789
    assert os.getxattr(d / "f", "user.k") == b"v" and os.getxattr(d / "f", "user.e") == b""
    assert os.getxattr(d / "cap", "security.capability") == CAP_V2
    assert os.listxattr(d / "planted") == []
    assert os.stat(d / "h").st_ino == f.st_ino and f.st_nlink == 2
    s = os.lstat(d / "s")
    assert os.readlink(d / "s") == "/etc/passwd" and (s.st_uid, s.st_gid) == (33, 44)
    assert s.st_mtime_ns == 1_400_000_000 * 10**9
    n = os.lstat(d / "null")
    assert stat.S_ISCHR(n.st_mode) and n.st_rdev == os.makedev(1, 3) and stat.S_IMODE(n.st_mode) == 0o666
    b = os.lstat(d / "loop")
    assert stat.S_ISBLK(b.st_mode) and b.st_rdev == os.makedev(7, 0) and b.st_gid == 6
    assert stat.S_ISFIFO(lmode(d / "fifo"))
    wo = os.lstat(d / "gone")
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0 and stat.S_IMODE(wo.st_mode) == 0
    assert not (d / ".wh.gone").exists() and not (dest / "o/.wh..wh..opq").exists()
    assert os.getxattr(dest / "o", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777


@needs_root
def test_overlay_same_layer_entry_beats_its_whiteout_in_any_order(tmp_path: Path) -> None:
    t = Tar().file("a", b"1").file(".wh.a").file(".wh.b").file("b", b"2").dir("c").file("c/x").file(".wh.c")
    unpack(bytes(t), tmp_path / "l")
    assert (tmp_path / "l/a").read_bytes() == b"1"
    assert (tmp_path / "l/b").read_bytes() == b"2"
    assert (tmp_path / "l/c/x").is_file()


def test_user_overlay_prefix_for_opaque(tmp_path: Path) -> None:
    t = Tar().dir("o").file("o/.wh..wh..opq")
    unpack(bytes(t), tmp_path / "l", overlay_xattr_prefix="user.overlay.")
    assert os.getxattr(tmp_path / "l/o", "user.overlay.opaque") == b"y"


def layered(tmp_path: Path, *layers: bytes, **opts: object) -> Path:
    dest = tmp_path / "rootfs"
    for data in layers:
        unpack(data, dest, flatten=True, **opts)
    return dest


def test_flatten_whiteouts_and_opaque(tmp_path: Path) -> None:
    lower = (
        Tar()
        .dir("etc")
        .file("etc/keep", b"k")
        .file("etc/gone", b"g")
        .dir("opt/tree/sub")
        .file("opt/tree/sub/deep", b"d")
        .dir("var/cache")
        .file("var/cache/old1")
        .file("var/cache/old2")
        .dir("var/cache/olddir")
        .file("var/cache/olddir/x")
        .file("var/cache/replaced", b"lower")
        .symlink("var/link", "/etc")
    )
    upper = (
        Tar()
        .file("etc/.wh.gone")
        .file("opt/.wh.tree")
        .file("var/cache/new", b"n")  # written before the opaque marker
        .file("var/cache/replaced", b"upper")
        .file("var/cache/.wh..wh..opq")
        .file("var/cache/later", b"l")  # written after it
        .file("var/.wh.link")
        .file("nothing/.wh.here")  # whiteout of a path that does not exist: no-op
        .file(".wh..wh.plnk/123")  # aufs metadata: skipped
    )
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert (root / "etc/keep").read_bytes() == b"k"
    assert not (root / "etc/gone").exists()
    assert not (root / "opt/tree").exists() and (root / "opt").is_dir()
    assert sorted(os.listdir(root / "var/cache")) == ["later", "new", "replaced"]
    assert (root / "var/cache/replaced").read_bytes() == b"upper"
    assert not os.path.lexists(root / "var/link")
    assert not (root / "nothing").exists()
    assert not (root / ".wh..wh.plnk").exists()
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))


def test_flatten_opaque_keeps_subtree_written_by_same_layer(tmp_path: Path) -> None:
    lower = Tar().dir("d/sub").file("d/sub/lowerfile").file("d/lowertop")
    upper = Tar().file("d/sub/upperfile", b"u").file("d/.wh..wh..opq")
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert sorted(str(p.relative_to(root)) for p in (root / "d").rglob("*")) == ["d/sub", "d/sub/upperfile"]


def test_flatten_type_replacements(tmp_path: Path) -> None:
    lower = (
        Tar()
        .file("f2d", b"x")
        .dir("d2f")
        .file("d2f/child")
        .symlink("l2d", "/etc")
        .dir("d2l")
        .file("d2l/child")
        .dir("dd", mode=0o700)
        .file("dd/child", b"c")
    )
    upper = (
        Tar()
        .dir("f2d", mode=0o711)
        .file("d2f", b"now a file")
        .dir("l2d")
        .file("l2d/inside", b"i")
        .symlink("d2l", "target")
        .dir("dd", mode=0o755)
    )
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert stat.S_ISDIR(lmode(root / "f2d")) and stat.S_IMODE(lmode(root / "f2d")) == 0o711
    assert (root / "d2f").read_bytes() == b"now a file"
    assert stat.S_ISDIR(lmode(root / "l2d")) and (root / "l2d/inside").read_bytes() == b"i"
    assert os.readlink(root / "d2l") == "target"
    assert (root / "dd/child").read_bytes() == b"c"  # dir onto dir keeps children
    assert stat.S_IMODE(lmode(root / "dd")) == 0o755  # ... and takes the new attributes


def test_flatten_hardlink_into_lower_layer_and_replace_target(tmp_path: Path) -> None:
    lower = Tar().dir("bin").file("bin/a", b"A")
    upper = Tar().hardlink("bin/b", "bin/a").hardlink("/bin/c", "/bin/a").file("bin/a", b"new")
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert (root / "bin/b").read_bytes() == b"A" and (root / "bin/c").read_bytes() == b"A"
    assert (root / "bin/a").read_bytes() == b"new"  # recreated, not written through the link
    assert os.stat(root / "bin/b").st_ino == os.stat(root / "bin/c").st_ino != os.stat(root / "bin/a").st_ino


def test_hardlink_overwrite_does_not_write_through(tmp_path: Path) -> None:
    t = Tar().file("a", b"orig").hardlink("b", "a").file("b", b"replacement")
    unpack(bytes(t), tmp_path / "l")
    assert (tmp_path / "l/a").read_bytes() == b"orig"
    assert (tmp_path / "l/b").read_bytes() == b"replacement"


def test_hardlink_errors(tmp_path: Path) -> None:
    with pytest.raises(EntryConflict, match="does not exist"):
        unpack(bytes(Tar().hardlink("h", "missing")), tmp_path / "a")
    with pytest.raises(EntryConflict, match="directory"):
        unpack(bytes(Tar().dir("d").hardlink("h", "d")), tmp_path / "b")
    with pytest.raises(PathEscape, match="root"):
        unpack(bytes(Tar().hardlink("h", "/")), tmp_path / "c")


def test_parent_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(EntryConflict, match="not a directory"):
        unpack(bytes(Tar().file("f").file("f/x")), tmp_path / "l")


def test_root_entry(tmp_path: Path) -> None:
    unpack(bytes(Tar().dir(".", mode=0o711).dir("/", mode=0o755).dir("a")), tmp_path / "l")
    assert stat.S_IMODE(os.stat(tmp_path / "l").st_mode) == 0o755
    for bad in (Tar().symlink(".", "/etc"), Tar().symlink("/", "/etc"), Tar().file("./", b"")):
        d = tmp_path / f"bad{id(bad)}"
        with pytest.raises(PathEscape, match="replace the root"):
            unpack(bytes(bad), d)
        assert stat.S_ISDIR(lmode(d))


def test_missing_parents_are_created(tmp_path: Path) -> None:
    unpack(bytes(Tar().file("a/b/c/file", b"x")), tmp_path / "l")
    assert (tmp_path / "l/a/b/c/file").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "l/a/b").st_mode) == 0o755


def test_devices_can_be_forbidden(tmp_path: Path) -> None:
    with pytest.raises(ForbiddenEntry, match="device"):
        unpack(bytes(Tar().add("null", b"3", devmajor=1, devminor=3)), tmp_path / "l", allow_devices=False)


@pytest.mark.parametrize("name", [".wh.", "d/.wh..", "d/.wh..."])
def test_invalid_whiteouts(tmp_path: Path, name: str) -> None:
    with pytest.raises(ForbiddenEntry, match="whiteout"):
        unpack(bytes(Tar().file(name)), tmp_path / "l")


def test_limits(tmp_path: Path) -> None:
    many = Tar()
    for i in range(11):
        many.file(f"f{i}")
    with pytest.raises(LimitExceeded, match="more than 10 entries"):
        unpack(bytes(many), tmp_path / "a", max_entries=10)
    with pytest.raises(LimitExceeded, match="bytes"):
        unpack(bytes(Tar().file("big", bytes(5000))), tmp_path / "b", max_total_bytes=4096)
    with pytest.raises(LimitExceeded, match="longer than 50"):
        unpack(bytes(Tar().file("x/" * 30 + "f")), tmp_path / "c", max_path_length=50)
    with pytest.raises(LimitExceeded, match="component"):
        unpack(bytes(Tar().pax({"path": "d/" + "n" * 300}).file("x")), tmp_path / "d")
    bomb = bytes(Tar().file("zeros", bytes(1 << 20)))
    (tmp_path / "e").mkdir()
    with pytest.raises(LimitExceeded, match="expands beyond 1000x"):
        unpack_layer(
            io.BytesIO(bomb),
            tmp_path / "e",
            options=UnpackOptions(max_expansion_ratio=1000),
            compressed_size=1000,
        )
    # a sparse file's logical size counts against max_total_bytes
    sparse = Tar().pax({"GNU.sparse.map": "0,1", "GNU.sparse.size": str(1 << 40), "GNU.sparse.major": "0"})
    sparse.pax({"GNU.sparse.minor": "1"}).file("s", b"x")
    with pytest.raises(LimitExceeded, match="writes more than"):
        unpack(bytes(sparse), tmp_path / "f")


def test_stream_is_read_to_the_end(tmp_path: Path) -> None:
    data = bytes(Tar().file("a", b"x")) + bytes(10240 - 2048)  # GNU tar record padding
    stats = unpack(data, tmp_path / "l")
    assert stats.tar_bytes == len(data)


def test_non_utf8_and_long_names(tmp_path: Path) -> None:
    long = "p/" * 100 + "leaf"
    t = (
        Tar()
        .file(b"caf\xe9", b"latin1")
        .pax({"path": long})
        .file("ignored", b"L")
        .gnu_long(b"g" * 200)
        .file("x")
    )
    unpack(bytes(t), tmp_path / "l")
    base = os.fsencode(tmp_path / "l")
    assert Path(os.fsdecode(base + b"/caf\xe9")).read_bytes() == b"latin1"
    assert (tmp_path / "l" / long).read_bytes() == b"L"
    assert (tmp_path / "l" / ("g" * 200)).exists()


def test_not_root_rootless_fallbacks(tmp_path: Path) -> None:
    # preserve_owner=False must not chown even when the archive asks for other ids
    dest = tmp_path / "l"
    unpack(bytes(Tar().file("f", b"", uid=4242, gid=4243)), dest, preserve_owner=False)
    st = os.stat(dest / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_pad_helper_blocks() -> None:
    assert len(pad(b"x")) == 512 and len(header(b"n")) == 512


def test_deferred_hardlinks_to_lower_layers(tmp_path: Path) -> None:
    t = (
        Tar()
        .hardlink("b", "lower/a")  # target lives in a lower layer
        .hardlink("c", "b")  # chain: recorded against the real target
        .hardlink("gone", "lower/x")
        .file("gone", b"replaced later in the layer")
        .file("here", b"h")
        .hardlink("here-link", "here")  # present: linked at once
    )
    stats = unpack(bytes(t), tmp_path / "l", defer_missing_hardlinks=True)
    assert stats.deferred_hardlinks == ((b"b", b"lower/a"), (b"c", b"lower/a"))
    assert not os.path.lexists(tmp_path / "l/b") and not os.path.lexists(tmp_path / "l/c")
    assert os.stat(tmp_path / "l/here-link").st_ino == os.stat(tmp_path / "l/here").st_ino
    with pytest.raises(EntryConflict, match="does not exist"):
        unpack(bytes(t), tmp_path / "m")


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="overlay_xattr_prefix"):
        UnpackOptions(overlay_xattr_prefix="security.")
    with pytest.raises(ValueError, match="max_entries"):
        UnpackOptions(max_entries=0)


def test_flatten_dir_entry_replaces_xattrs_of_existing_dir(tmp_path: Path) -> None:
    lower = Tar().pax({"SCHILY.xattr.user.old": "1", "SCHILY.xattr.user.both": "a"}).dir("d")
    upper = Tar().pax({"SCHILY.xattr.user.both": "b"}).dir("d")
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert sorted(os.listxattr(root / "d")) == ["user.both"]
    assert os.getxattr(root / "d", "user.both") == b"b"


def test_user_xattr_on_symlink_is_skipped(tmp_path: Path) -> None:
    # Linux refuses user.* xattrs on symlinks; such an entry is skipped, not fatal.
    t = Tar().pax({"SCHILY.xattr.user.x": "v"}).symlink("s", "target")
    stats = unpack(bytes(t), tmp_path / "l")
    assert os.readlink(tmp_path / "l/s") == "target" and stats.xattrs_skipped == 1


@pytest.mark.parametrize("chunk", [61, 4096, 1 << 20])
def test_unpack_streams_without_seeking_any_read_size(tmp_path: Path, chunk: int) -> None:
    from .test_tarstream import Stream

    big = os.urandom((1 << 20) + 4321)
    t = (
        Tar()
        .dir("d")
        .file("d/big", big)
        .file("d/small", b"s" * 700)
        .symlink("d/l", "big")
        .hardlink("d/h", "d/big")
    )
    data = bytes(t)
    stats = unpack_layer(Stream(data, chunk), tmp_path, options=UnpackOptions())  # type: ignore[arg-type]
    assert (tmp_path / "d/big").read_bytes() == big and (tmp_path / "d/small").read_bytes() == b"s" * 700
    assert stats.tar_bytes == len(data) and stats.bytes_written == len(big) + 700


@needs_root
def test_overlay_whiteout_then_same_layer_directory_is_opaque(tmp_path: Path) -> None:
    """A layer's own entries beat its whiteouts; the directory they need must still hide the
    lower one's contents, so it is made opaque (what flattening does by deleting them)."""
    t = (
        Tar()
        .file(".wh.a")
        .file("a/x", b"x")  # parent revived from the whiteout device
        .dir("b")
        .file("b/y")
        .file(".wh.b")  # whiteout after the layer's own directory
        .file(".wh.c")
        .dir("c")  # directory entry replacing the whiteout device
        .file(".wh.f")
        .file("f", b"file wins")
    )
    dest = tmp_path / "l"
    unpack(bytes(t), dest)
    for d in ("a", "b", "c"):
        assert (dest / d).is_dir() and os.getxattr(dest / d, "trusted.overlay.opaque") == b"y", d
    assert (dest / "a/x").read_bytes() == b"x" and (dest / "b/y").exists()
    assert (dest / "f").read_bytes() == b"file wins"


def test_flatten_whiteout_of_own_directory_empties_lower_content(tmp_path: Path) -> None:
    lower = Tar().dir("d").file("d/lower")
    upper = Tar().dir("d").file("d/mine").file(".wh.d")
    root = layered(tmp_path, bytes(lower), bytes(upper))
    assert sorted(os.listdir(root / "d")) == ["mine"]


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o777, 0o000, 0o400, 0o4755, 0o2711, 0o1777, 0o620])
def test_file_modes_are_exact_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o027)
    try:
        unpack(bytes(Tar().file("f", b"data", mode=mode)), tmp_path / "l")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "l/f").st_mode) == mode
    assert os.stat(tmp_path / "l/f").st_size == 4


def test_deferred_hardlink_under_a_directory_later_replaced_by_a_symlink_never_leaves_the_layer(
    tmp_path: Path,
) -> None:
    from image_pull.unpack.overlay import copy_up_links

    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "a").write_bytes(b"lower file")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"not the layer's")
    t = (
        Tar()
        .dir("d")
        .hardlink("d/x", "a")  # deferred: the target lives in the lower layer
        .symlink("d", os.fspath(outside))  # then d itself becomes a link out of the layer
    )
    stats = unpack(bytes(t), tmp_path / "l", defer_missing_hardlinks=True)
    assert stats.deferred_hardlinks == ()  # the link went with its directory
    copy_up_links(tmp_path / "l", (), [lower])
    # and the copy-up itself refuses a link path through a symlink, should one reach it
    with pytest.raises(ImagePullError, match="symlink"):
        copy_up_links(tmp_path / "l", [("d/x", "a")], [lower])
    assert (outside / "x").read_bytes() == b"not the layer's"  # neither unlinked nor replaced
    assert os.stat(outside / "x").st_nlink == 1


def _tarfile_layer(*members: tuple[str, str, bytes | str]) -> bytes:
    """A layer built with Python's tarfile: (kind, name, data or link target) per member."""
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, arg in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            body = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                assert isinstance(arg, bytes)
                info.size, body = len(arg), io.BytesIO(arg)
            else:
                assert isinstance(arg, str)
                info.type = tarfile.LNKTYPE if kind == "hardlink" else tarfile.SYMTYPE
                info.linkname = arg
            tf.addfile(info, body)
    return out.getvalue()


def _gnu_tar_flattened(tmp_path: Path, *layers: bytes) -> Path:
    """What GNU tar makes of the layers extracted one over the other, replacing directories
    as image unpackers do (no whiteout handling)."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    dest = tmp_path / "gnu"
    dest.mkdir()
    for i, data in enumerate(layers):
        (tmp_path / f"gnu{i}.tar").write_bytes(data)
        argv = ["tar", "--recursive-unlink", "-xf", str(tmp_path / f"gnu{i}.tar"), "-C", str(dest)]
        subprocess.run(argv, check=True, capture_output=True)
    return dest


@pytest.mark.parametrize(
    "replacement",
    [("file", "d", b"a file now"), ("symlink", "d", "a"), ("hardlink", "d", "a")],
    ids=["file", "symlink", "hardlink-to-lower"],
)
def test_deferred_hardlink_dropped_with_its_directory_replaced_later_in_the_layer(
    tmp_path: Path, replacement: tuple[str, str, bytes | str]
) -> None:
    """A pending link under a directory that a later entry replaces goes with the directory,
    as with GNU tar (which makes the link, then removes it with its directory); the copy-up
    used to meet the pending link and fail with a raw FileNotFoundError/NotADirectoryError."""
    from image_pull.unpack.overlay import copy_up_links

    lower_tar = _tarfile_layer(("file", "a", b"lower a"))
    upper_tar = _tarfile_layer(("dir", "d", b""), ("hardlink", "d/x", "a"), replacement)
    lower = tmp_path / "lower"
    unpack(lower_tar, lower)
    stats = unpack(upper_tar, tmp_path / "l", defer_missing_hardlinks=True)
    assert all(link != b"d/x" for link, _target in stats.deferred_hardlinks)
    deferred = [(os.fsdecode(a), os.fsdecode(b)) for a, b in stats.deferred_hardlinks]
    copy_up_links(tmp_path / "l", deferred, [lower])
    gnu = _gnu_tar_flattened(tmp_path, lower_tar, upper_tar)
    for root in (gnu, tmp_path / "l"):
        assert not os.path.isdir(root / "d") and os.path.lexists(root / "d"), root
    if replacement[0] == "hardlink":  # the replacement itself is a link into the lower layer
        assert (tmp_path / "l/d").read_bytes() == (gnu / "d").read_bytes() == b"lower a"
        assert os.stat(tmp_path / "l/d").st_ino == os.stat(tmp_path / "l/a").st_ino


def test_deferred_hardlink_whose_directory_is_replaced_and_made_again_stays_dropped(
    tmp_path: Path,
) -> None:
    t = Tar().dir("d").hardlink("d/x", "lower/a").file("d").dir("d").file("d/y", b"y")
    stats = unpack(bytes(t), tmp_path / "l", defer_missing_hardlinks=True)
    assert stats.deferred_hardlinks == ()
    assert (tmp_path / "l/d/y").read_bytes() == b"y"


@needs_root
@pytest.mark.parametrize("later", ["replaced", "whiteout", "parent-whiteout"])
def test_deferred_hardlink_keeps_the_lower_file_when_a_later_entry_takes_the_target_place(
    tmp_path: Path, later: str
) -> None:
    """The link was made while the target was the lower layer's file: it keeps that file (as
    GNU tar extracting the layers in order does), whatever the layer later puts at the target."""
    from image_pull.unpack.overlay import copy_up_links, is_whiteout

    lower_tar = _tarfile_layer(("dir", "d", b""), ("file", "d/f", b"lower f"))
    last = {
        "replaced": ("file", "d/f", b"new f"),
        "whiteout": ("file", "d/.wh.f", b""),
        "parent-whiteout": ("file", ".wh.d", b""),
    }[later]
    upper_tar = _tarfile_layer(("hardlink", "x", "d/f"), ("hardlink", "y", "d/f"), last)
    lower = tmp_path / "lower"
    unpack(lower_tar, lower)
    layer = tmp_path / "l"
    stats = unpack(upper_tar, layer, defer_missing_hardlinks=True)
    deferred = [(os.fsdecode(a), os.fsdecode(b)) for a, b in stats.deferred_hardlinks]
    copy_up_links(layer, deferred, [lower])
    assert (layer / "x").read_bytes() == b"lower f"
    assert os.stat(layer / "y").st_ino == os.stat(layer / "x").st_ino
    if later == "replaced":
        gnu = _gnu_tar_flattened(tmp_path, lower_tar, upper_tar)
        assert (gnu / "x").read_bytes() == b"lower f" and (gnu / "d/f").read_bytes() == b"new f"
        assert (layer / "d/f").read_bytes() == b"new f"
        assert os.stat(layer / "d/f").st_ino != os.stat(layer / "x").st_ino
    else:
        assert is_whiteout(layer / ("d/f" if later == "whiteout" else "d"))


@needs_root
def test_owner_is_exact_when_the_chown_of_files_already_ours_is_skipped(tmp_path: Path) -> None:
    """Files that creation already gives our uid/gid skip the fchown; a set-group-ID parent
    gives its own group instead, so there the chown must still happen (and after the parent's
    metadata changes later in the layer)."""
    t = (
        Tar()
        .dir("sg", mode=0o2775, uid=0, gid=50)
        .file("sg/ours", b"x", uid=0, gid=0)
        .file("sg/theirs", b"x", uid=0, gid=50)
        .dir("plain", mode=0o755, uid=0, gid=0)
        .file("plain/ours", b"x", uid=0, gid=0)
        .file("plain/other", b"x", uid=7, gid=8)
        .dir("plain", mode=0o2755, uid=0, gid=60)  # becomes set-group-ID later in the layer
        .file("plain/late", b"x", uid=0, gid=0)
    )
    dest = tmp_path / "l"
    unpack(bytes(t), dest)
    owners = {
        p: (os.lstat(dest / p).st_uid, os.lstat(dest / p).st_gid)
        for p in ("sg/ours", "sg/theirs", "plain/ours", "plain/other", "plain/late")
    }
    assert owners == {
        "sg/ours": (0, 0),
        "sg/theirs": (0, 50),
        "plain/ours": (0, 0),
        "plain/other": (7, 8),
        "plain/late": (0, 0),
    }
