"""Byte-level tar builders and tree snapshots for the unpack tests.

``Tar`` writes headers by hand (so tests can produce exactly the archives
that real and hostile producers emit: pax records with any bytes, GNU long
names, base-256 numbers, odd type flags, missing end markers) and
``snapshot`` records everything the unpack is supposed to restore.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    digits = b"%0*o" % (width - 1, value)
    if len(digits) > width - 1:
        # base-256 (GNU): 0x80 marker, big-endian value
        return bytes([0x80]) + value.to_bytes(width - 1, "big")
    return digits + b"\x00"


def pax_record(key: str | bytes, value: bytes | str) -> bytes:
    k = key.encode() if isinstance(key, str) else key
    v = value.encode() if isinstance(value, str) else value
    body = b" " + k + b"=" + v + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def header(
    name: bytes,
    typeflag: bytes = b"0",
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_700_000_000,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes = b"",
    gnu: bool = False,
    uname: bytes = b"",
    gname: bytes = b"",
    raw_size: bytes | None = None,
    bad_checksum: bool = False,
) -> bytes:
    blk = bytearray(BLOCK)
    blk[0:100] = name[:100].ljust(100, b"\x00")
    blk[100:108] = _octal(mode, 8)
    blk[108:116] = _octal(uid, 8)
    blk[116:124] = _octal(gid, 8)
    blk[124:136] = raw_size if raw_size is not None else _octal(size, 12)
    blk[136:148] = _octal(mtime, 12)
    blk[148:156] = b" " * 8
    blk[156:157] = typeflag
    blk[157:257] = linkname[:100].ljust(100, b"\x00")
    blk[257:265] = b"ustar  \x00" if gnu else b"ustar\x0000"
    blk[265:297] = uname[:32].ljust(32, b"\x00")
    blk[297:329] = gname[:32].ljust(32, b"\x00")
    blk[329:337] = _octal(devmajor, 8)
    blk[337:345] = _octal(devminor, 8)
    if not gnu:
        blk[345:500] = prefix[:155].ljust(155, b"\x00")
    checksum = sum(blk) + (1 if bad_checksum else 0)
    blk[148:156] = b"%06o\x00 " % checksum
    return bytes(blk)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


@dataclass
class Tar:
    """Accumulates tar members; ``bytes()`` adds the end-of-archive marker."""

    parts: list[bytes] = field(default_factory=list)

    def raw(self, data: bytes) -> Tar:
        self.parts.append(data)
        return self

    def pax(
        self, records: dict[str, bytes | str] | list[tuple[str, bytes | str]], *, glob: bool = False
    ) -> Tar:
        items = records.items() if isinstance(records, dict) else records
        body = b"".join(pax_record(k, v) for k, v in items)
        self.parts.append(header(b"PaxHeaders/x", b"g" if glob else b"x", size=len(body)) + pad(body))
        return self

    def gnu_long(self, name: bytes, *, link: bool = False) -> Tar:
        body = name + b"\x00"
        self.parts.append(
            header(b"././@LongLink", b"K" if link else b"L", size=len(body), gnu=True) + pad(body)
        )
        return self

    def add(self, name: bytes | str, typeflag: bytes = b"0", data: bytes = b"", **kw: object) -> Tar:
        n = name.encode() if isinstance(name, str) else name
        for key in ("linkname", "prefix"):
            value = kw.get(key)
            if isinstance(value, str):
                kw[key] = value.encode()
        self.parts.append(header(n, typeflag, size=len(data), **kw) + pad(data))  # type: ignore[arg-type]
        return self

    def file(self, name: bytes | str, data: bytes = b"", **kw: object) -> Tar:
        return self.add(name, b"0", data, **kw)

    def dir(self, name: bytes | str, mode: int = 0o755, **kw: object) -> Tar:
        return self.add(name, b"5", mode=mode, **kw)

    def symlink(self, name: bytes | str, target: bytes | str, **kw: object) -> Tar:
        return self.add(name, b"2", linkname=target, mode=0o777, **kw)

    def hardlink(self, name: bytes | str, target: bytes | str, **kw: object) -> Tar:
        return self.add(name, b"1", linkname=target, **kw)

    def build(self, *, end: bool = True) -> bytes:
        return b"".join(self.parts) + (bytes(2 * BLOCK) if end else b"")

    def __bytes__(self) -> bytes:
        return self.build()


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    content: str | None
    target: bytes | None
    rdev: tuple[int, int] | None
    xattrs: tuple[tuple[str, bytes], ...]
    size: int


def snapshot(
    root: Path, *, mtimes: bool = True, dir_mtimes: bool = True, xattrs: bool = True
) -> tuple[dict[bytes, Node], list[list[bytes]]]:
    """Everything an unpack restores, keyed by path relative to ``root`` (b"." = root).

    Returns (nodes, hardlink groups: sorted lists of paths sharing an inode).
    """
    nodes: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    base = os.fsencode(root)

    def visit(rel: bytes) -> None:
        full = base + b"/" + rel if rel != b"." else base
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            # overlayfs lists a whiteout in a directory that exists only in the top
            # layer, yet looking the name up fails: the entry is not there.
            return
        mode = st.st_mode
        content = target = rdev = None
        if stat.S_ISREG(mode):
            kind = "file"
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            content = h.hexdigest()
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "symlink"
            target = os.readlink(full)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "char" if stat.S_ISCHR(mode) else "block"
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISFIFO(mode):
            kind = "fifo"
        else:
            kind = "other"
        xa: list[tuple[str, bytes]] = []
        if xattrs:
            try:
                names = os.listxattr(full, follow_symlinks=False)
            except OSError:
                names = []
            for n in sorted(names):
                xa.append((n, os.getxattr(full, n, follow_symlinks=False)))
        keep_mtime = mtimes and (kind != "dir" or dir_mtimes)
        nodes[rel] = Node(
            kind=kind,
            mode=stat.S_IMODE(mode) if kind != "symlink" else 0,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns if keep_mtime else None,
            content=content,
            target=target,
            rdev=rdev,
            xattrs=tuple(xa),
            size=st.st_size if kind == "file" else 0,
        )
        if kind == "dir":
            for child in sorted(os.listdir(full)):
                visit(child if rel == b"." else rel + b"/" + child)

    visit(b".")
    groups = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return nodes, groups


def diff_trees(a: dict[bytes, Node], b: dict[bytes, Node]) -> list[str]:
    """Human-readable differences between two snapshots."""
    out: list[str] = []
    for path in sorted(set(a) | set(b)):
        na, nb = a.get(path), b.get(path)
        if na is None or nb is None:
            out.append(f"{path!r}: only in {'second' if na is None else 'first'}")
            continue
        for fname in Node.__dataclass_fields__:
            va, vb = getattr(na, fname), getattr(nb, fname)
            if va != vb:
                out.append(f"{path!r}: {fname} {va!r} != {vb!r}")
    return out


def diff_fields(a: dict[bytes, Node], b: dict[bytes, Node]) -> set[tuple[bytes, str]]:
    """(path, field) pairs that differ; field "presence" when a path is only on one side."""
    out: set[tuple[bytes, str]] = set()
    for path in set(a) | set(b):
        na, nb = a.get(path), b.get(path)
        if na is None or nb is None:
            out.add((path, "presence"))
            continue
        out.update((path, f) for f in Node.__dataclass_fields__ if getattr(na, f) != getattr(nb, f))
    return out
