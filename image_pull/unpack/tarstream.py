"""A strict, streaming tar reader for OCI layers.

It reads a tar archive front to back from any object with ``read(n)`` (never
seeks, never holds more than one buffer of the archive in memory) and yields
:class:`TarEntry` headers.  The data of the current entry is copied straight
to a file descriptor with :meth:`TarReader.copy_data`; data that is not
consumed is skipped when the next header is requested.

Formats: v7, ustar (prefix field), GNU (``L``/``K`` long names, base-256
numbers, old ``S`` sparse files), POSIX pax (``x``/``g`` records, ``path``,
``linkpath``, ``size``, ``uid``, ``gid``, fractional ``mtime``/``atime``,
``SCHILY.xattr.*``, ``LIBARCHIVE.xattr.*``, GNU sparse 0.0, 0.1 and 1.0).

Parsing follows Go's ``archive/tar`` (what umoci and containerd use) where
implementations differ, so that the same bytes mean the same files here and
there: header-only types (links, devices, directories, FIFOs) carry no data
whatever their size field says; an empty pax value for a standard keyword
falls back to the ustar field.  Deliberate differences: an empty
``SCHILY.xattr.*`` value is an empty xattr (as GNU tar restores it; Go drops
it), and non-zero bytes after the end-of-archive marker are an error (Go stops
reading; image-rs keeps reading entries past it -- a parser differential we
refuse rather than pick a side of).

An archive that ends at an entry boundary without the end-of-archive marker
(Debian's umoci 0.4.7 ``insert`` writes such layers) is accepted unless
``require_end_marker`` is set: the caller verifies the layer digest anyway.
"""

from __future__ import annotations

import enum
import os
import re
import struct
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from coco_common.b64 import b64_decode

from .errors import LimitExceeded, MalformedTar, UnsupportedEntry, describe_name

__all__ = ["EntryType", "ReaderLimits", "TarEntry", "TarReader"]

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 20
_OCTAL_DIGITS = b"01234567"
# name, mode, uid, gid, (size), mtime, (checksum, type), linkname, magic+version, (uname, gname),
# devmajor, devminor, prefix
_FIELDS = struct.Struct("100s8s8s8s12x12s8x1x100s8s64x8s8s155s12x")
_DECIMAL_DIGITS = b"0123456789"


class EntryType(enum.Enum):
    """Kind of filesystem object an entry describes."""

    REGULAR = "regular"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    DIRECTORY = "directory"
    FIFO = "fifo"


_TYPES: dict[bytes, EntryType] = {
    b"0": EntryType.REGULAR,
    b"\x00": EntryType.REGULAR,
    b"7": EntryType.REGULAR,
    b"S": EntryType.REGULAR,
    b"1": EntryType.HARDLINK,
    b"2": EntryType.SYMLINK,
    b"3": EntryType.CHAR,
    b"4": EntryType.BLOCK,
    b"5": EntryType.DIRECTORY,
    b"D": EntryType.DIRECTORY,
    b"6": EntryType.FIFO,
}


class TarEntry(NamedTuple):
    """One archive member, with every header extension applied.

    ``name`` and ``linkname`` are raw archive bytes (not yet cleaned or
    confined). ``size`` is the number of data bytes stored in the archive;
    ``real_size`` the logical file size (they differ for sparse files, whose
    ``sparse`` map lists ``(offset, length)`` data regions). Immutable; a
    NamedTuple rather than a frozen dataclass because one is built per archive
    member and a frozen dataclass costs ~15 us to construct.
    """

    name: bytes
    kind: EntryType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int | None
    size: int
    real_size: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[str, bytes], ...]
    sparse: tuple[tuple[int, int], ...] | None
    offset: int


@dataclass(frozen=True)
class ReaderLimits:
    """Bounds on what the reader will buffer or accept (all in bytes unless noted)."""

    max_meta_bytes: int = 1 << 20
    """Total size of pax / GNU long-name records attached to one entry."""
    max_global_records: int = 1024
    """Number of keys a sequence of pax global headers may accumulate."""
    max_name_length: int = 4096
    max_xattrs: int = 1024
    """Xattrs on one entry (count)."""
    max_xattr_value: int = 1 << 16
    max_sparse_regions: int = 1 << 16
    """Regions in one sparse map (count)."""
    max_stream_bytes: int | None = None
    """Total archive bytes read (None: unlimited)."""


class TarReader:
    """Iterate the entries of a tar stream; see the module docstring."""

    def __init__(
        self,
        untrusted_stream: BinaryIO,
        *,
        limits: ReaderLimits | None = None,
        require_end_marker: bool = False,
    ) -> None:
        self._stream = untrusted_stream
        self._limits = limits or ReaderLimits()
        self._require_end = require_end_marker
        self._buf = b""
        self._pos = 0
        self._base = 0  # stream offset of self._buf[0]
        self._read_total = 0
        self._remaining = 0  # data bytes of the current entry not yet consumed
        self._padding = 0  # padding after the current entry's data
        self._current: TarEntry | None = None
        self._globals: dict[str, bytes] = {}
        self._done = False
        self.saw_end_marker = False

    # ------------------------------------------------------------------ buffer

    @property
    def position(self) -> int:
        """Archive bytes consumed so far."""
        return self._base + self._pos

    @property
    def bytes_read(self) -> int:
        """Archive bytes read from the underlying stream so far (>= position)."""
        return self._read_total

    def _read(self, n: int) -> bytes:
        chunk = self._stream.read(n)
        if chunk:
            self._read_total += len(chunk)
            cap = self._limits.max_stream_bytes
            if cap is not None and self._read_total > cap:
                raise LimitExceeded(f"layer is larger than the limit of {cap} bytes once decompressed")
        return chunk

    def _fill(self, n: int) -> int:
        """Make at least ``n`` bytes available if the stream has them; return how many are."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return avail
        parts = [self._buf[self._pos :]] if avail else []
        while avail < n:
            chunk = self._read(max(_CHUNK, n - avail))
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self._base += self._pos
        self._buf = b"".join(parts)
        self._pos = 0
        return avail

    def _take(self, n: int, what: str) -> bytes:
        if self._fill(n) < n:
            raise MalformedTar(f"archive truncated in {what} at offset {self.position}")
        start = self._pos
        self._pos += n
        return self._buf[start : start + n]

    def _discard(self, n: int) -> int:
        """Skip up to ``n`` bytes; return how many were actually skipped (less only at EOF)."""
        skipped = 0
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail == 0:
                if self._fill(min(n, _CHUNK)) == 0:
                    break
                continue
            k = min(avail, n)
            self._pos += k
            n -= k
            skipped += k
        return skipped

    # ------------------------------------------------------------------ data

    def copy_data(self, fd: int) -> int:
        """Write the current entry's data to ``fd`` (sparse-aware); return logical size."""
        entry = self._current
        if entry is None:
            raise MalformedTar("no current entry")
        if entry.sparse is None:
            n = self._remaining
            pos = self._pos
            if len(self._buf) - pos >= n:  # the common small file: already buffered
                if n:
                    done = os.write(fd, memoryview(self._buf)[pos : pos + n])
                    if done < n:
                        _write_all(fd, memoryview(self._buf)[pos + done : pos + n])
                self._pos = pos + n
                self._remaining = 0
                return entry.size
            self._copy_to(fd, n)
            return entry.size
        pos = 0  # file offset after the last write
        for off, length in entry.sparse:
            if not length:
                continue  # GNU tar ends maps with a (size, 0) region; a seek alone makes no data
            if off != pos:
                os.lseek(fd, off, os.SEEK_SET)
            self._copy_to(fd, length)
            pos = off + length
        if entry.real_size != pos:
            os.ftruncate(fd, entry.real_size)
        return entry.real_size

    def read_data(self, limit: int) -> bytes:
        """Return the current entry's (non-sparse) data, refusing more than ``limit`` bytes."""
        if self._remaining > limit:
            raise LimitExceeded(f"entry data of {self._remaining} bytes exceeds {limit}")
        n = self._remaining
        data = self._take(n, "entry data")
        self._remaining = 0
        return data

    def _copy_to(self, fd: int, n: int) -> None:
        if n > self._remaining:
            raise MalformedTar("sparse map larger than entry data")
        self._remaining -= n
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail:
                k = min(avail, n)
                _write_all(fd, memoryview(self._buf)[self._pos : self._pos + k])
                self._pos += k
                n -= k
                continue
            if n >= _CHUNK:
                # Large file: bypass the buffer and write each chunk as it arrives.
                chunk = self._read(_CHUNK)
                if not chunk:
                    raise MalformedTar(f"archive truncated in file data at offset {self.position}")
                self._base += len(chunk)
                _write_all(fd, chunk)
                n -= len(chunk)
                continue
            if self._fill(min(n, _CHUNK)) == 0:
                raise MalformedTar(f"archive truncated in file data at offset {self.position}")

    def skip_data(self) -> None:
        """Skip what is left of the current entry's data and padding."""
        n = self._remaining
        self._remaining = 0
        if n and self._discard(n) < n:
            raise MalformedTar(f"archive truncated in file data at offset {self.position}")

    # ------------------------------------------------------------------ headers

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            entry = self.next()
            if entry is None:
                return
            yield entry

    def next(self) -> TarEntry | None:
        """Return the next entry, or None at the end of the archive."""
        if self._done:
            return None
        if self._remaining:
            self.skip_data()
        pad = self._padding
        if pad:
            self._padding = 0
            if len(self._buf) - self._pos >= pad:
                self._pos += pad
            elif self._discard(pad) < pad:
                self._end_without_marker()
                return None
        self._current = None
        entry = self._read_entry()
        self._current = entry
        return entry

    def _end_without_marker(self) -> None:
        if self._require_end:
            raise MalformedTar("archive ends without an end-of-archive marker")
        self._done = True

    def drain(self) -> int:
        """Read the rest of the stream (zero padding after the end marker); return bytes read."""
        start = self.position
        while True:
            avail = len(self._buf) - self._pos
            if avail == 0 and self._fill(1) == 0:
                break
            view = self._buf[self._pos :]
            if view.count(0) != len(view):
                raise MalformedTar(f"non-zero data after the end-of-archive marker at offset {self.position}")
            self._pos = len(self._buf)
        return self.position - start

    def _read_entry(self) -> TarEntry | None:
        """Read header blocks up to the next file entry: extension headers (pax ``x``/``g``,
        GNU ``L``/``K``) accumulate for it, a GNU volume label is skipped."""
        pending: _Pending | None = None
        while True:
            offset = self._base + self._pos
            got = len(self._buf) - self._pos
            if got < BLOCK:
                got = self._fill(BLOCK)
            if got == 0:
                self._end_without_marker()
                return None
            if got < BLOCK:
                raise MalformedTar(f"archive truncated in a header at offset {offset}")
            blk = self._buf[self._pos : self._pos + BLOCK]
            self._pos += BLOCK
            if blk == _ZERO_BLOCK:
                if pending is not None and pending.holds_entry_data():
                    raise MalformedTar(f"extension header without a following entry at offset {offset}")
                self._done = True
                self.saw_end_marker = True
                return None
            _verify_checksum(blk, offset)
            flag = blk[156:157]
            size = _number(blk[124:136], "size", offset)
            if size < 0:
                raise MalformedTar(f"negative size at offset {offset}")
            if flag in _EXTENSION_FLAGS:
                if pending is None:
                    pending = _Pending()
                self._extension(pending, flag, size, offset)
                continue
            if flag == b"V":  # GNU volume label: not a file
                if self._discard(size + (-size % BLOCK)) < size:
                    raise MalformedTar(f"archive truncated at offset {offset}")
                if pending is not None:
                    pending.forget_entry_data()
                continue
            kind = _TYPES.get(flag)
            if kind is None:
                raise UnsupportedEntry(f"unsupported tar entry type {flag!r} at offset {offset}")
            return self._build(blk, flag, kind, size, offset, pending)

    def _extension(self, pending: _Pending, flag: bytes, size: int, offset: int) -> None:
        """Read one extension header's data into ``pending`` (globals into the reader)."""
        pending.meta_bytes += size
        if pending.meta_bytes > self._limits.max_meta_bytes:
            raise LimitExceeded(f"extended headers of {pending.meta_bytes} bytes at offset {offset}")
        data = self._take(size, "an extended header")
        pad = -size % BLOCK
        if len(self._buf) - self._pos >= pad:
            self._pos += pad
        else:
            self._discard(pad)
        if flag == b"x":
            pending.local.extend(_parse_pax(data, offset))
        elif flag == b"g":
            for key, value in _parse_pax(data, offset):
                if value:
                    self._globals[key] = value
                else:
                    self._globals.pop(key, None)
            if len(self._globals) > self._limits.max_global_records:
                raise LimitExceeded(f"too many pax global records at offset {offset}")
        elif flag == b"L":
            pending.long_name = data.split(b"\x00", 1)[0]
        else:
            pending.long_link = data.split(b"\x00", 1)[0]

    def _build(
        self, blk: bytes, flag: bytes, kind: EntryType, size: int, offset: int, pending: _Pending | None
    ) -> TarEntry:
        """Make the entry for header ``blk``: the header's fields, then GNU long names, then
        pax records (globals first, then the entry's own), then checks on the result."""
        h = self._header_fields(blk, flag, kind, size, offset)
        records: dict[str, bytes] | None = None
        if pending is not None:
            if pending.long_name is not None:
                h.name = pending.long_name
            if pending.long_link is not None:
                h.linkname = pending.long_link
        if flag == b"\x00" and h.name.endswith(b"/"):
            h.kind = EntryType.DIRECTORY  # v7 directory: by the header's or GNU long name, not pax path
        if pending is not None:
            if pending.local or self._globals:
                records = self._apply_pax(h, pending.local, offset)
        elif self._globals:
            records = self._apply_pax(h, [], offset)
        if h.mtime_ns is None:
            h.mtime_ns = _number(h.mtime_field, "mtime", offset) * 1_000_000_000
        if h.xattrs:
            self._check_xattrs(h.xattrs, offset)
        pax_sparse_1 = False
        if records is not None and (
            "GNU.sparse.major" in records or "GNU.sparse.map" in records or h.sparse_offsets
        ):
            pax_sparse_1 = self._pax_sparse(h, records, offset)
        self._check_entry(h, flag, offset)
        self._remaining = h.size
        self._padding = -h.size % BLOCK
        if pax_sparse_1:
            h.sparse = self._pax1_sparse_map(offset)
            h.size = self._remaining
        if h.sparse is not None:
            h.sparse = _check_sparse(h.sparse, h.real_size, h.size, self._limits.max_sparse_regions, offset)
        return TarEntry(
            h.name,
            h.kind,
            h.mode & 0o7777,
            h.uid,
            h.gid,
            h.mtime_ns,
            h.atime_ns,
            h.size,
            h.real_size,
            h.linkname,
            h.devmajor,
            h.devminor,
            tuple(h.xattrs.items()) if h.xattrs else (),
            h.sparse,
            offset,
        )

    def _header_fields(self, blk: bytes, flag: bytes, kind: EntryType, size: int, offset: int) -> _Fields:
        """The values the 512-byte header itself gives (ustar prefix, GNU old sparse map)."""
        h = _Fields()
        f_name, f_mode, f_uid, f_gid, h.mtime_field, f_link, magic, f_major, f_minor, f_prefix = (
            _FIELDS.unpack(blk)
        )
        name = f_name.split(b"\x00", 1)[0]
        if magic[:6] == b"ustar\x00" and f_prefix[0]:
            name = f_prefix.split(b"\x00", 1)[0] + b"/" + name
        h.name = name
        h.linkname = f_link.split(b"\x00", 1)[0] if f_link[0] else b""
        cache = _NUMBERS
        mode = cache.get(f_mode)
        h.mode = _cached_number(f_mode, "mode", offset) if mode is None else mode
        uid = cache.get(f_uid)
        h.uid = _cached_number(f_uid, "uid", offset) if uid is None else uid
        gid = cache.get(f_gid)
        h.gid = _cached_number(f_gid, "gid", offset) if gid is None else gid
        if kind is EntryType.CHAR or kind is EntryType.BLOCK:
            h.devmajor = _number(f_major, "devmajor", offset)
            h.devminor = _number(f_minor, "devminor", offset)
        h.kind = kind
        h.size = h.real_size = size
        if flag == b"S":
            if magic != b"ustar  \x00":
                raise MalformedTar(f"GNU sparse entry without GNU magic at offset {offset}")
            h.sparse, h.real_size = self._gnu_sparse(blk, offset)
        return h

    def _apply_pax(self, h: _Fields, local: list[tuple[str, bytes]], offset: int) -> dict[str, bytes] | None:
        """Apply the pax records to ``h``: the global ones first, then the entry's own in order.

        An empty value unsets a keyword (the header's field applies again, as in Go's
        archive/tar), except that an empty ``SCHILY.xattr.*`` value is an empty xattr (as GNU
        tar restores it; Go drops it). Returns the merged records for the sparse step, or
        None when the entry's records were simple and took the fast path (no sparse keys).
        """
        if local and not self._globals and _apply_simple_records(h, local, offset):
            return None
        records = dict(self._globals)
        for key, value in local:
            if key.startswith(("SCHILY.xattr.", "LIBARCHIVE.xattr.")):
                records[key] = value
            elif key == "GNU.sparse.offset":
                h.sparse_offsets.append(_decimal(value, key, offset))
            elif key == "GNU.sparse.numbytes":
                h.sparse_numbytes.append(_decimal(value, key, offset))
            elif value:
                records[key] = value
            else:
                records.pop(key, None)
        for key, value in records.items():
            if key == "path":
                h.name = value
            elif key == "mtime":
                h.mtime_ns = _pax_time(value, offset)
            elif key == "atime":
                h.atime_ns = _pax_time(value, offset)
            elif key == "linkpath":
                h.linkname = value
            elif key == "size":
                h.size = h.real_size = _decimal(value, key, offset)
            elif key == "uid":
                h.uid = _decimal(value, key, offset)
            elif key == "gid":
                h.gid = _decimal(value, key, offset)
            elif key.startswith("SCHILY.xattr."):
                h.xattrs[_xattr_name(key[13:], offset)] = value
            elif key.startswith("LIBARCHIVE.xattr."):
                xname = _xattr_name(urllib.parse.unquote(key[17:], errors="strict"), offset)
                try:  # libarchive leaves the padding out
                    h.xattrs[xname] = b64_decode(value + b"=" * (-len(value) % 4))
                except ValueError as exc:
                    raise MalformedTar(f"bad LIBARCHIVE.xattr value at offset {offset}") from exc
        return records

    def _check_xattrs(self, xattrs: dict[str, bytes], offset: int) -> None:
        limits = self._limits
        if len(xattrs) > limits.max_xattrs:
            raise LimitExceeded(f"{len(xattrs)} xattrs on one entry at offset {offset}")
        for xname, xvalue in xattrs.items():
            if len(xvalue) > limits.max_xattr_value:
                raise LimitExceeded(f"xattr {xname!r} value of {len(xvalue)} bytes at offset {offset}")

    def _pax_sparse(self, h: _Fields, records: dict[str, bytes], offset: int) -> bool:
        """Apply the pax GNU sparse formats 0.0, 0.1 and 1.0; return True for 1.0, whose map
        is read from the start of the entry data (by :meth:`_pax1_sparse_map`)."""
        offsets, numbytes = h.sparse_offsets, h.sparse_numbytes
        major = records.get("GNU.sparse.major", b"0")
        minor = records.get("GNU.sparse.minor", b"0" if offsets else b"1")
        sname = records.get("GNU.sparse.name")
        if sname:
            h.name = sname
        version_1 = (major, minor) == (b"1", b"0")
        if version_1:
            rs = records.get("GNU.sparse.realsize")
        else:
            rs = records.get("GNU.sparse.size")
            if major == b"0" and minor == b"1" and "GNU.sparse.map" in records:
                raw_map = records["GNU.sparse.map"].split(b",")
                nums = [_decimal(x, "GNU.sparse.map", offset) for x in raw_map]
                if len(nums) % 2:
                    raise MalformedTar(f"odd GNU.sparse.map at offset {offset}")
                h.sparse = tuple(zip(nums[0::2], nums[1::2], strict=True))
            elif major == b"0" and minor == b"0":
                if len(offsets) != len(numbytes):
                    raise MalformedTar(f"unpaired GNU.sparse.offset/numbytes at offset {offset}")
                h.sparse = tuple(zip(offsets, numbytes, strict=True))
            else:
                raise UnsupportedEntry(f"unsupported GNU sparse version at offset {offset}")
        if rs is None:
            raise MalformedTar(f"sparse entry without a real size at offset {offset}")
        h.real_size = _decimal(rs, "GNU.sparse.realsize", offset)
        return version_1

    def _check_entry(self, h: _Fields, flag: bytes, offset: int) -> None:
        """Refuse what no entry may be; drop the data of header-only types."""
        if b"\x00" in h.name or b"\x00" in h.linkname:
            raise MalformedTar(f"NUL byte in a name at offset {offset}")
        limit = self._limits.max_name_length
        if len(h.name) > limit or len(h.linkname) > limit:
            raise LimitExceeded(f"name longer than {limit} bytes at offset {offset}: {describe_name(h.name)}")
        if h.kind is not EntryType.REGULAR:
            if flag in _HEADER_ONLY:
                h.size = 0  # links, devices, directories, FIFOs carry no data (as Go's archive/tar)
            h.real_size = 0  # a GNU dumpdir ('D') keeps its data size: skipped, never extracted
            h.sparse = None
        if h.uid < 0 or h.gid < 0:
            raise MalformedTar(f"negative uid/gid at offset {offset}")
        if h.devmajor < 0 or h.devminor < 0:
            raise MalformedTar(f"negative device number at offset {offset}")

    def _gnu_sparse(self, blk: bytes, offset: int) -> tuple[tuple[tuple[int, int], ...], int]:
        regions: list[tuple[int, int]] = []

        def take(area: bytes, count: int) -> None:
            for i in range(count):
                field = area[i * 24 : i * 24 + 24]
                if field[0] == 0:
                    break
                off = _number(field[:12], "sparse offset", offset)
                regions.append((off, _number(field[12:], "sparse size", offset)))
                if len(regions) > self._limits.max_sparse_regions:
                    raise LimitExceeded(f"too many sparse regions at offset {offset}")

        take(blk[386:482], 4)
        extended = blk[482]
        real_size = _number(blk[483:495], "sparse real size", offset)
        while extended:
            ext = self._take(BLOCK, "a sparse header")
            take(ext[:504], 21)
            extended = ext[504]
        return tuple(regions), real_size

    def _pax1_sparse_map(self, offset: int) -> tuple[tuple[int, int], ...]:
        """Read the GNU sparse 1.0 map stored at the start of the entry data."""
        numbers: list[int] = []
        tail = b""
        count: int | None = None
        consumed = 0
        while count is None or len(numbers) < 2 * count:
            block = self._take_data(BLOCK, offset)
            consumed += BLOCK
            if consumed > self._limits.max_meta_bytes:
                raise LimitExceeded(f"sparse map too large at offset {offset}")
            parts = (tail + block).split(b"\n")
            tail = parts.pop()
            for part in parts:
                if count is not None and len(numbers) >= 2 * count:
                    break
                value = _decimal(part, "GNU sparse map", offset)
                if count is None:
                    count = value
                    if count > self._limits.max_sparse_regions:
                        raise LimitExceeded(f"too many sparse regions at offset {offset}")
                else:
                    numbers.append(value)
            if len(tail) > 40 and (count is None or len(numbers) < 2 * count):
                raise MalformedTar(f"bad GNU sparse map at offset {offset}")
        return tuple(zip(numbers[0::2], numbers[1::2], strict=True))

    def _take_data(self, n: int, offset: int) -> bytes:
        if self._remaining < n:
            raise MalformedTar(f"sparse map runs past the entry data at offset {offset}")
        self._remaining -= n
        return self._take(n, "a sparse map")


def _check_sparse(
    regions: tuple[tuple[int, int], ...], real_size: int, data_size: int, max_regions: int, offset: int
) -> tuple[tuple[int, int], ...]:
    if len(regions) > max_regions:
        raise LimitExceeded(f"too many sparse regions at offset {offset}")
    pos = 0
    total = 0
    for off, length in regions:
        if off < pos or length < 0:
            raise MalformedTar(f"sparse regions overlap or go backwards at offset {offset}")
        pos = off + length
        total += length
    if pos > real_size:
        raise MalformedTar(f"sparse region past the real size at offset {offset}")
    if total != data_size:
        raise MalformedTar(f"sparse map does not match the stored data at offset {offset}")
    return regions


def _write_all(fd: int, data: bytes | memoryview) -> None:
    n = os.write(fd, data)
    while n < len(data):
        data = memoryview(data)[n:]
        n = os.write(fd, data)


def _cstr(field: bytes) -> bytes:
    i = field.find(b"\x00")
    return field if i < 0 else field[:i]


def _number(field: bytes, what: str, offset: int) -> int:
    """Parse an octal or base-256 numeric header field (Go archive/tar rules)."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b" \x00")
    if digits.isdigit():  # ASCII digits only: no sign, underscore, prefix or blank
        try:
            return int(digits, 8)
        except ValueError:
            pass
    elif not digits:
        return 0
    raise MalformedTar(f"bad {what} field at offset {offset}")


class _Pending:
    """Extension headers read so far for the next entry."""

    __slots__ = ("local", "long_link", "long_name", "meta_bytes")

    def __init__(self) -> None:
        self.local: list[tuple[str, bytes]] = []
        self.long_name: bytes | None = None
        self.long_link: bytes | None = None
        self.meta_bytes = 0  # all extension data of this entry, a volume label's included

    def holds_entry_data(self) -> bool:
        return bool(self.local) or self.long_name is not None or self.long_link is not None

    def forget_entry_data(self) -> None:
        self.local.clear()
        self.long_name = self.long_link = None


class _Fields:
    """One entry's values while its headers are applied; becomes a :class:`TarEntry`."""

    __slots__ = (
        "atime_ns",
        "devmajor",
        "devminor",
        "gid",
        "kind",
        "linkname",
        "mode",
        "mtime_field",
        "mtime_ns",
        "name",
        "real_size",
        "size",
        "sparse",
        "sparse_numbytes",
        "sparse_offsets",
        "uid",
        "xattrs",
    )
    name: bytes
    linkname: bytes
    kind: EntryType
    mode: int
    uid: int
    gid: int
    mtime_field: bytes
    size: int
    real_size: int

    def __init__(self) -> None:
        self.mtime_ns: int | None = None  # from pax, else the header field
        self.atime_ns: int | None = None
        self.devmajor = self.devminor = 0
        self.xattrs: dict[str, bytes] = {}
        self.sparse: tuple[tuple[int, int], ...] | None = None
        self.sparse_offsets: list[int] = []  # pax GNU sparse 0.0 records
        self.sparse_numbytes: list[int] = []


def _apply_simple_records(h: _Fields, local: list[tuple[str, bytes]], offset: int) -> bool:
    """Apply this entry's pax records in one pass when no global records apply.

    Returns False, with ``h`` untouched, on anything unusual (use the general path): an
    empty value (which unsets a keyword), GNU sparse keywords, libarchive xattrs.
    """
    name = linkname = None
    size = uid = gid = mtime_ns = atime_ns = None
    xattrs: dict[str, bytes] = {}
    for key, value in local:
        if not value:
            return False
        if key == "mtime":
            mtime_ns = _pax_time(value, offset)
        elif key == "atime":
            atime_ns = _pax_time(value, offset)
        elif key == "ctime":
            continue
        elif key == "path":
            name = value
        elif key == "linkpath":
            linkname = value
        elif key == "size":
            size = _decimal(value, key, offset)
        elif key == "uid":
            uid = _decimal(value, key, offset)
        elif key == "gid":
            gid = _decimal(value, key, offset)
        elif key.startswith("SCHILY.xattr."):
            xattrs[_xattr_name(key[13:], offset)] = value
        elif key.startswith(("GNU.sparse.", "LIBARCHIVE.")):
            return False
    if name is not None:
        h.name = name
    if linkname is not None:
        h.linkname = linkname
    if size is not None:
        h.size = h.real_size = size
    if uid is not None:
        h.uid = uid
    if gid is not None:
        h.gid = gid
    if mtime_ns is not None:
        h.mtime_ns = mtime_ns
    h.atime_ns = atime_ns
    h.xattrs = xattrs
    return True


_HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_EXTENSION_FLAGS = frozenset({b"x", b"g", b"L", b"K"})

_NUMBERS: dict[bytes, int] = {}
"""Parsed mode/uid/gid fields: a handful of distinct values fill most archives."""


def _cached_number(field: bytes, what: str, offset: int) -> int:
    value = _number(field, what, offset)
    if len(_NUMBERS) < 4096:
        _NUMBERS[field] = value
    return value


def _decimal(value: bytes, what: str, offset: int) -> int:
    if not value.isdigit() or len(value) > 30:
        raise MalformedTar(f"bad {what} value at offset {offset}")
    return int(value)


def _pax_time(value: bytes, offset: int) -> int:
    if 10 < len(value) <= 30 and value[-10] == 0x2E:  # GNU tar's form: <seconds>.<9 digits>
        digits = value[:-10] + value[-9:]
        if digits.isdigit():  # ASCII digits only, so int() reads exactly them
            return int(digits)
    whole, dot, frac = value.partition(b".")
    neg = whole.startswith(b"-")
    if neg:
        whole = whole[1:]
    if not whole.isdigit() or len(whole) > 20 or (dot and not frac.isdigit()):
        raise MalformedTar(f"bad pax time at offset {offset}")
    ns = int(whole) * 1_000_000_000 + (int(frac[:9].ljust(9, b"0")) if frac else 0)
    return -ns if neg else ns


def _xattr_name(name: str, offset: int) -> str:
    if not name or "\x00" in name or len(name) > 255:
        raise MalformedTar(f"bad xattr name at offset {offset}")
    return name


def _verify_checksum(blk: bytes, offset: int) -> None:
    field = blk[148:156]
    digits = field.strip(b" \x00")
    # octal digits only (no sign, underscore or blank); anything else matches no sum
    stored = int(digits, 8) if digits and not digits.strip(_OCTAL_DIGITS) else -1
    # adler32's low half is 1 + (byte sum mod 65521), computed in C. A block with at most
    # 256 non-zero bytes (any real header) sums to at most 65280: exact in one call; else
    # each half-block sum is below 65521.
    if blk.count(0) >= 256:
        unsigned = (zlib.adler32(blk) & 0xFFFF) - 1
    else:
        unsigned = (zlib.adler32(blk[:256]) & 0xFFFF) + (zlib.adler32(blk[256:]) & 0xFFFF) - 2
    unsigned += 8 * 32 - sum(field)
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in blk if b >= 128) + 256 * sum(1 for b in blk[148:156] if b >= 128)
    if stored != signed:
        raise MalformedTar(f"header checksum mismatch at offset {offset}")


_PAX_RECORD = re.compile(rb"([0-9]{1,20}) ([^=\x00]+)=")


_PAX_LINE = re.compile(rb"(([0-9]{1,20}) ([^=\x00\n]+)=([^\n]*)\n)")


_PAX_KEYS = {k.encode(): k for k in ("path", "linkpath", "size", "uid", "gid", "mtime", "atime", "ctime")}


def _parse_pax(data: bytes, offset: int) -> list[tuple[str, bytes]]:
    """Parse ``"<len> <key>=<value>\\n"`` records, in order.

    Fast path: when newline-free records tile ``data`` exactly and each one's stated
    length is its actual length, :func:`_parse_pax_records` would read the same records
    (it finds each end by the stated length): take them from one regex scan.
    """
    found = _PAX_LINE.findall(data)
    total = 0
    for record, length, _key, _value in found:
        n = len(record)
        if int(length) != n:
            break
        total += n
    else:
        if total == len(data):
            keys = _PAX_KEYS
            try:
                return [
                    (keys.get(key) or key.decode("utf-8"), value) for _record, _length, key, value in found
                ]
            except UnicodeDecodeError:
                pass  # the general parser reports it
    return _parse_pax_records(data, offset)


def _parse_pax_records(data: bytes, offset: int) -> list[tuple[str, bytes]]:
    """Parse pax records one by one, each end found by its stated length."""
    records: list[tuple[str, bytes]] = []
    pos = 0
    end_all = len(data)
    match = _PAX_RECORD.match
    while pos < end_all:
        m = match(data, pos)
        if m is None:
            if not data[pos:].strip(b"\x00"):
                break  # NUL padding after the last record
            raise MalformedTar(f"bad pax record at offset {offset}")
        end = pos + int(m[1])
        start = m.end()
        if end > end_all or end <= start or data[end - 1] != 0x0A:
            raise MalformedTar(f"bad pax record at offset {offset}")
        try:
            key = m[2].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedTar(f"non-UTF-8 pax keyword at offset {offset}") from exc
        records.append((key, data[start : end - 1]))
        pos = end
    return records
