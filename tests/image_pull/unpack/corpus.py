"""Checked-in generator of the unpack conformance and hostile corpora.

    python -m tests.image_pull.unpack.corpus OUTDIR [--outside PATH]

writes ``OUTDIR/conformance/layer-N.tar`` (a multi-layer image exercising
every changeset rule; the conformance test applies it with our unpacker and
with umoci and compares the trees) and ``OUTDIR/hostile/<case>-N.tar`` (layers
built to escape DEST; ``--outside`` is the directory they aim at).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from image_pull.unpack import EntryConflict, LimitExceeded, MalformedTar, PathEscape, UnpackError

from .tarbuild import Tar

CAP_V2 = bytes.fromhex("0000000200200000000000000000000000000000")
CAP_V3 = bytes.fromhex("000000030020000000000000000000000000000000000000")
BIG = bytes(range(256)) * 8192  # 2 MiB, not sparse
MT = 1_650_000_000


def _gnu_tar_sparse_layer(fmt: str) -> bytes:
    """A layer holding a sparse file, written by GNU tar itself."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        (src / "sparse").mkdir(parents=True)
        with open(src / "sparse" / f"holes-{fmt}", "wb") as f:
            f.truncate(8 << 20)
            f.seek(1 << 20)
            f.write(b"middle")
            f.seek((8 << 20) - 5)
            f.write(b"end!!")
        with open(src / "sparse" / f"trailing-hole-{fmt}", "wb") as f:
            f.truncate(3 << 20)  # ends in a hole: GNU tar closes the map with a (size, 0) region
            f.write(b"head")
        for p in (
            src / "sparse" / f"holes-{fmt}",
            src / "sparse" / f"trailing-hole-{fmt}",
            src / "sparse",
            src,
        ):
            os.utime(p, (MT, MT))
        args = ["tar", "-C", str(src), "--sparse", "--numeric-owner", "--owner=0", "--group=0"]
        if fmt == "gnu":
            args.append("--format=gnu")
        else:
            args += ["--format=pax", f"--sparse-version={fmt}", "--pax-option=delete=atime,delete=ctime"]
        out = Path(tmp, "l.tar")
        subprocess.run([*args, "-cf", str(out), "sparse"], check=True)
        return out.read_bytes()


def conformance_layers(*, cross_layer_hardlinks: bool = True) -> list[tuple[str, bytes]]:
    """An image whose layers cover every rule of the changeset spec.

    Overlay form cannot express a hardlink to a file of a lower layer (each
    layer is its own directory), so ``cross_layer_hardlinks=False`` leaves
    those out for the overlay comparison.
    """
    base = (
        Tar()
        .dir("./", mode=0o755, mtime=MT)
        .dir("etc", mtime=MT)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mtime=MT)
        .file("etc/gone", b"deleted by layer 2", mtime=MT)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC", mtime=MT)
        .dir("usr", mtime=MT)
        .dir("usr/bin", mtime=MT)
        .file("usr/bin/su", b"\x7fELF su", mode=0o4755, mtime=MT)
        .file("usr/bin/wall", b"\x7fELF wall", mode=0o2755, gid=5, mtime=MT)
        .hardlink("usr/bin/su-link", "usr/bin/su")
        .pax({"SCHILY.xattr.security.capability": CAP_V2})
        .file("usr/bin/ping", b"\x7fELF ping", mode=0o755, mtime=MT)
        .pax({"SCHILY.xattr.security.capability": CAP_V3, "SCHILY.xattr.user.note": "v3 caps"})
        .file("usr/bin/ping3", b"\x7fELF ping3", mode=0o755, mtime=MT)
        .symlink("bin", "usr/bin", mtime=MT)
        .dir("tmp", mode=0o1777, mtime=MT)
        .dir("home", mtime=MT)
        .dir("home/user", mode=0o700, uid=1000, gid=1000, mtime=MT)
        .file("home/user/.profile", b"export A=1\n", mode=0o600, uid=1000, gid=1000, mtime=MT)
        .symlink("home/user/link", "../../etc/passwd", uid=1000, gid=1000, mtime=MT)
        .dir("dev", mtime=MT)
        .add("dev/null", b"3", devmajor=1, devminor=3, mode=0o666, mtime=MT)
        .add("dev/loop0", b"4", devmajor=7, devminor=0, mode=0o660, gid=6, mtime=MT)
        .add("dev/initctl", b"6", mode=0o600, mtime=MT)
        .file("big.bin", BIG, mtime=MT)
        .file("empty", b"", mode=0o400, mtime=MT)
        .pax({"mtime": "1650000000.123456789", "atime": "1650000001.5"})
        .file("fractional-mtime", b"f", mtime=MT)
        .dir("long", mtime=MT)
        .pax({"path": "long/" + "n" * 120})
        .dir("ignored-dir-name", mtime=MT)
        .pax({"path": "long/" + "n" * 120 + "/" + "f" * 200, "SCHILY.xattr.user.empty": ""})
        .file("ignored-short-name", b"pax long name", mtime=MT)
        .pax({"linkpath": "/" + "t" * 150})
        .symlink("long-symlink", "ignored", mtime=MT)
        .file(b"caf\xe9-latin1", b"non-utf8 name", mtime=MT)
        .pax({"SCHILY.xattr.user.dirattr": "on-dir"})
        .dir("opt", mtime=MT)
        .dir("opt/old", mtime=MT)
        .file("opt/old/file", b"old", mtime=MT)
        .dir("opt/keep", mtime=MT)
        .file("opt/keep/file", b"keep", mtime=MT)
        .dir("var", mtime=MT)
        .dir("var/cache", mtime=MT)
        .file("var/cache/a", b"a", mtime=MT)
        .dir("var/cache/sub", mtime=MT)
        .file("var/cache/sub/b", b"b", mtime=MT)
        .file("var/cache/replaced", b"lower", mtime=MT)
        .file("f2d", b"file becomes dir", mtime=MT)
        .dir("d2f", mtime=MT)
        .file("d2f/child", b"c", mtime=MT)
        .symlink("l2d", "/etc", mtime=MT)
        .dir("d2l", mtime=MT)
        .file("d2l/child", b"c", mtime=MT)
        .dir("chmod-me", mode=0o700, mtime=MT)
        .file("chmod-me/child", b"stays", mtime=MT)
        .file("hl-target", b"target in lower layer", mtime=MT)
        .file("fifo-over-file", b"x", mtime=MT)
        .dir("wd1", mtime=MT)
        .file("wd1/lower", b"hidden by .wh.wd1", mtime=MT)
        .dir("wd2", mtime=MT)
        .file("wd2/lower", b"hidden by .wh.wd2", mtime=MT)
        .dir("wd3", mtime=MT)
        .file("wd3/lower", b"hidden by .wh.wd3", mtime=MT)
    )
    upper = (
        Tar()
        .file("etc/.wh.gone", mtime=MT)
        .file("opt/.wh.old", mtime=MT)
        .file("var/cache/new", b"new", mtime=MT)
        .file("var/cache/replaced", b"upper", mtime=MT)
        .file("var/cache/.wh..wh..opq", mtime=MT)
        .file("var/cache/after-opq", b"after", mtime=MT)
        .file("nothing-here/.wh.absent", mtime=MT)
        .dir("f2d", mode=0o711, mtime=MT)
        .file("d2f", b"dir became file", mtime=MT)
        .dir("l2d", mtime=MT)
        .file("l2d/inside", b"i", mtime=MT)
        .symlink("d2l", "target", mtime=MT)
        .dir("chmod-me", mode=0o755, uid=1000, mtime=MT + 1)
        .file("usr/bin/.wh.wall", mtime=MT)
        .file("same-layer-a", b"entry before its whiteout", mtime=MT)
        .file(".wh.same-layer-a", mtime=MT)
        .file(".wh.same-layer-b", mtime=MT)
        .file("same-layer-b", b"entry after its whiteout", mtime=MT)
        .add("fifo-over-file", b"6", mode=0o640, mtime=MT)
        .file(".wh.wd1", mtime=MT)  # whiteout, then a new file below the same name
        .file("wd1/x", b"x", mtime=MT)
        .dir("wd2", mtime=MT)  # new directory and file first, whiteout after them
        .file("wd2/y", b"y", mtime=MT)
        .file(".wh.wd2", mtime=MT)
        .file(".wh.wd3", mtime=MT)  # whiteout, then a directory entry of the same name
        .dir("wd3", mode=0o750, mtime=MT)
        .file("wd3/z", b"z", mtime=MT)
    )
    if cross_layer_hardlinks:
        upper.hardlink("hl-upper", "hl-target")
        upper.hardlink("usr/bin/new-link", "usr/bin/ping")
        upper.hardlink("hl-meta", "etc/passwd", mode=0o777, uid=5, mtime=MT + 50)
    gnu = (
        Tar()
        .dir("gnu", mtime=MT, gnu=True)
        .gnu_long(b"gnu/" + b"L" * 150)
        .dir("y", mtime=MT, gnu=True)
        .gnu_long(b"gnu/" + b"L" * 150 + b"/leaf")
        .file("x", b"gnu long name", mtime=MT, gnu=True)
        .gnu_long(b"/" + b"K" * 150, link=True)
        .add("gnu-long-link", b"2", mtime=MT, gnu=True, linkname=b"x")
        .file("bigid", b"base-256 uid", uid=2**21 + 5, gid=2**21 + 7, mtime=MT)
    )
    layers = [("base", bytes(base)), ("upper", bytes(upper)), ("gnu", bytes(gnu))]
    for fmt in ("0.0", "0.1", "1.0"):
        layers.append((f"sparse-{fmt}", _gnu_tar_sparse_layer(fmt)))
    return layers


@dataclass(frozen=True)
class HostileCase:
    name: str
    layers: tuple[bytes, ...]
    expect: type[UnpackError] | None
    """Exception the last layer must raise (None: it must succeed, contained in DEST)."""
    overlay_expect: type[UnpackError] | str | None = "same"


def hostile_cases(outside: Path) -> list[HostileCase]:
    out = str(outside)
    victim = str(outside / "victim")
    cases = [
        HostileCase("dotdot", (bytes(Tar().file("../outside/pwned", b"x")),), None),
        HostileCase("dotdot-deep", (bytes(Tar().file("a/../../../../outside/pwned", b"x")),), None),
        HostileCase("absolute-name", (bytes(Tar().file(out + "/pwned", b"x")),), None),
        HostileCase("symlink-parent-abs", (bytes(Tar().symlink("l", out).file("l/pwned", b"x")),), None),
        HostileCase(
            "symlink-parent-rel", (bytes(Tar().symlink("l", "../outside").file("l/victim", b"w")),), None
        ),
        HostileCase(
            "symlink-up-and-out",
            (bytes(Tar().symlink("l", "../../../../../../../..").file("l" + out + "/victim", b"w")),),
            None,
        ),
        HostileCase(
            "symlink-chain",
            (bytes(Tar().symlink("a", "b").symlink("b", "c/../../outside").file("a/victim", b"w")),),
            None,
        ),
        HostileCase(
            "symlink-dir-dotdot",
            (
                bytes(
                    Tar()
                    .dir("d")
                    .symlink("d/up", "..")
                    .symlink("d/l", "up/up/up/outside")
                    .file("d/l/victim", b"w")
                ),
            ),
            None,
        ),
        HostileCase(
            "symlink-loop", (bytes(Tar().symlink("a", "b").symlink("b", "a").file("a/x", b"x")),), PathEscape
        ),
        HostileCase("symlink-self-loop", (bytes(Tar().symlink("a", "a").file("a/x", b"x")),), PathEscape),
        HostileCase("symlink-abs-loop", (bytes(Tar().symlink("a", "/a/b").file("a/x", b"x")),), PathEscape),
        HostileCase("hardlink-abs-outside", (bytes(Tar().hardlink("h", victim)),), EntryConflict),
        HostileCase("hardlink-dotdot", (bytes(Tar().hardlink("h", "../outside/victim")),), EntryConflict),
        HostileCase(
            "hardlink-through-symlink-parent",
            (bytes(Tar().symlink("l", out).hardlink("h", "l/victim")),),
            EntryConflict,
        ),
        HostileCase(
            "hardlink-through-up-symlink",
            (bytes(Tar().symlink("l", "../../../../../..").hardlink("h", "l/etc/passwd")),),
            EntryConflict,
        ),
        HostileCase(
            "hardlink-to-symlink-then-write",
            (bytes(Tar().symlink("s", victim).hardlink("h", "s").file("h", b"w").file("s", b"w")),),
            None,
        ),
        HostileCase(
            "hardlink-to-dotdot-symlink-then-write",
            (bytes(Tar().symlink("s", "../outside/victim").hardlink("h", "s").file("h", b"w")),),
            None,
        ),
        HostileCase(
            "hardlink-proc", (bytes(Tar().hardlink("h", "/proc/self/root" + victim)),), EntryConflict
        ),
        HostileCase("whiteout-dotdot", (bytes(Tar().file("../outside/.wh.victim")),), None),
        HostileCase("whiteout-abs", (bytes(Tar().file(out + "/.wh.victim")),), None),
        HostileCase(
            "whiteout-symlink-parent",
            (bytes(Tar().symlink("l", out)), bytes(Tar().file("l/.wh.victim"))),
            None,
        ),
        HostileCase(
            "whiteout-rel-symlink-parent",
            (bytes(Tar().symlink("l", "../outside")), bytes(Tar().file("l/.wh.victim"))),
            None,
        ),
        HostileCase(
            "whiteout-the-symlink", (bytes(Tar().symlink("s", out)), bytes(Tar().file(".wh.s"))), None
        ),
        HostileCase(
            "opaque-through-symlink",
            (bytes(Tar().symlink("l", "../outside")), bytes(Tar().file("l/.wh..wh..opq"))),
            None,
        ),
        HostileCase(
            "opaque-abs-symlink", (bytes(Tar().symlink("l", out)), bytes(Tar().file("l/.wh..wh..opq"))), None
        ),
        HostileCase("opaque-dotdot", (bytes(Tar().file("a")), bytes(Tar().file("../.wh..wh..opq"))), None),
        HostileCase(
            "symlink-then-dir",
            (bytes(Tar().symlink("x", out).dir("x", mode=0o777).file("x/pwned", b"x")),),
            None,
        ),
        HostileCase(
            "dir-then-symlink",
            (bytes(Tar().dir("x").file("x/a", b"a").symlink("x", out).file("x/pwned", b"x")),),
            None,
        ),
        HostileCase(
            "symlink-replaced-across-layers",
            (
                bytes(Tar().dir("x").file("x/a")),
                bytes(Tar().symlink("x", out)),
                bytes(Tar().file("x/pwned", b"x")),
            ),
            None,
        ),
        HostileCase(
            "chmod-through-symlink", (bytes(Tar().symlink("s", victim).add("s", b"4", mode=0o777)),), None
        ),
        HostileCase(
            "device-over-symlink", (bytes(Tar().symlink("s", victim).add("s", b"6", mode=0o777)),), None
        ),
        HostileCase(
            "nul-in-name",
            (bytes(Tar().pax({"path": b"a\x00/../../outside/pwned"}).file("x", b"x")),),
            MalformedTar,
        ),
        HostileCase(
            "overlong-component",
            (bytes(Tar().pax({"path": "d/" + "c" * 300}).file("x", b"x")),),
            LimitExceeded,
        ),
        HostileCase(
            "overlong-path", (bytes(Tar().pax({"path": "d/" * 2100 + "f"}).file("x", b"x")),), LimitExceeded
        ),
        HostileCase(
            "root-becomes-symlink", (bytes(Tar().symlink(".", out).file("pwned", b"x")),), PathEscape
        ),
        HostileCase(
            "root-dotdot-symlink", (bytes(Tar().symlink("..", out).file("pwned", b"x")),), PathEscape
        ),
        HostileCase("root-becomes-file", (bytes(Tar().file("/", b"x")),), PathEscape),
        HostileCase("root-hardlink", (bytes(Tar().hardlink("./", victim)),), PathEscape),
        HostileCase("hardlink-to-root", (bytes(Tar().hardlink("h", "../")),), PathEscape),
        HostileCase(
            "parent-is-device",
            (bytes(Tar().add("d", b"3", devmajor=1, devminor=3).file("d/x", b"x")),),
            EntryConflict,
        ),
        HostileCase(
            "hardlink-symlink-chmod",
            (bytes(Tar().symlink("p", victim).hardlink("h", "p", mode=0o777, uid=1234, gid=1234)),),
            None,
        ),
        HostileCase(
            "whiteout-dead-symlink-parent",
            (bytes(Tar().symlink("l", "/dead/end")), bytes(Tar().file("l/.wh.x"))),
            None,
        ),
        HostileCase("symlink-named-dotdot-child", (bytes(Tar().dir("a").symlink("a/..", out)),), PathEscape),
        HostileCase("symlink-chain-too-long", (bytes(_symlink_chain(41).file("l0/x", b"x")),), PathEscape),
        HostileCase("symlink-chain-ok", (bytes(_symlink_chain(30).file("l0/x", b"x")),), None),
    ]
    return cases


def _symlink_chain(n: int) -> Tar:
    """l0 -> l1 -> ... -> l<n-1> -> d (a directory): n symlinks to follow."""
    t = Tar().dir("d")
    for i in range(n):
        t.symlink(f"l{i}", f"l{i + 1}" if i + 1 < n else "d")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--outside", type=Path, default=Path("/tmp/unpack-outside"))
    args = ap.parse_args()
    (args.outdir / "conformance").mkdir(parents=True, exist_ok=True)
    (args.outdir / "hostile").mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(conformance_layers()):
        (args.outdir / "conformance" / f"layer-{i}-{name}.tar").write_bytes(data)
    for case in hostile_cases(args.outside):
        for i, data in enumerate(case.layers):
            (args.outdir / "hostile" / f"{case.name}-{i}.tar").write_bytes(data)
    print(f"wrote corpus to {args.outdir}")


if __name__ == "__main__":
    main()
