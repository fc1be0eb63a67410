"""Key-value storage behind the KBS (reference §8.5): namespaces of keys to
bytes, with optional expiry. The layouts are trustee v0.21's
(``deps/key-value-storage``), so a trustee KBS and this one can share a store:

* ``Memory``: per process;
* ``LocalFs``: ``<dir_path>/<namespace>/<key with '/' written as \\x2F>``, the value's bytes;
* ``LocalJson``: ``<file_dir_path>/<namespace>``, one JSON object of key -> URL-safe
  base64 (padded) of the value;
* ``Redis``: key ``<namespace>:<key>``, the value's bytes;
* ``Postgres``: one table per namespace, ``key TEXT PRIMARY KEY, value BYTEA``.

Stores with ``native_ttl`` expire values themselves; on the others a value
written with a TTL is kept as is (sessions carry their own expiry, as
trustee's do). :class:`EncryptedStore` seals values with AES-256-GCM when
an at-rest key is configured."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coco_common.b64 import b64url_decode
from coco_common.files import FileTooLarge, read_bounded, write_atomic
from coco_common.strict_json import strict_loads

from .errors import KbsConfigError, StorageError

if TYPE_CHECKING:
    from .config import StorageConfig

__all__ = [
    "NS_ATTESTATION_POLICY",
    "NS_KBS",
    "NS_REFERENCE_VALUE",
    "NS_REPOSITORY",
    "NS_SESSION",
    "EncryptedStore",
    "KvStore",
    "LocalFsStore",
    "LocalJsonStore",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "load_at_rest_key",
    "open_store",
]

NS_KBS = "kbs"
NS_REPOSITORY = "repository"
NS_SESSION = "kbs_protocol_session"
NS_ATTESTATION_POLICY = "attestation_service_policy"
NS_REFERENCE_VALUE = "reference_value"

#: largest stored value (resources are bounded by the request size limit anyway)
MAX_VALUE_BYTES = 64 * 1024 * 1024
_NS = re.compile(r"^[a-z_]+$")


class KvStore(Protocol):
    #: the backend expires values itself (Redis, memory); else readers check the expiry
    native_ttl: bool

    async def get(self, ns: str, key: str) -> bytes | None: ...

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...

    async def delete(self, ns: str, key: str) -> bool: ...

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Create-only set: True if stored, False if a live value is already there (atomic)."""
        ...

    async def keys(self, ns: str) -> list[str]: ...

    async def purge_expired(self) -> int: ...

    async def close(self) -> None: ...


def _check_ns(ns: str) -> None:
    if not _NS.fullmatch(ns):
        raise StorageError("invalid storage namespace")


class MemoryStore:
    native_ttl = True

    def __init__(self) -> None:
        #: namespace -> key -> (value, expiry): listing a namespace never walks the others
        #: (the sessions, up to max_sessions of them, live beside the reference values)
        self._data: dict[str, dict[str, tuple[bytes, float | None]]] = {}

    async def get(self, ns: str, key: str) -> bytes | None:
        space = self._data.get(ns, {})
        item = space.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= time.time():
            space.pop(key, None)
            return None
        return item[0]

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        _check_ns(ns)
        exp = time.time() + ttl_s if ttl_s is not None else None
        self._data.setdefault(ns, {})[key] = (bytes(value), exp)

    async def delete(self, ns: str, key: str) -> bool:
        return self._data.get(ns, {}).pop(key, None) is not None

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        if await self.get(ns, key) is not None:
            return False
        await self.set(ns, key, value, ttl_s=ttl_s)
        return True

    async def keys(self, ns: str) -> list[str]:
        now = time.time()
        return sorted(k for k, (_, exp) in self._data.get(ns, {}).items() if exp is None or exp > now)

    async def purge_expired(self) -> int:
        now = time.time()
        n = 0
        for space in self._data.values():
            dead = [k for k, (_, exp) in space.items() if exp is not None and exp <= now]
            for k in dead:
                space.pop(k, None)
            n += len(dead)
        return n

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        return sum(len(space) for space in self._data.values())


_EXP = struct.Struct(">d")
_MAGIC_TTL = b"KBSTTL1\0"
_TTL_HEAD = len(_MAGIC_TTL) + _EXP.size
#: per-namespace subdirectory for values with an expiry (a hidden name: never a valid key)
_TTL_DIR = ".ttl"


class LocalFsStore:
    """One file per key, trustee's layout: a value without expiry is the file's exact bytes at
    ``<dir>/<ns>/<key>``, whatever they start with. A value with a TTL (sessions) lives apart,
    in ``<dir>/<ns>/.ttl/<key>``, behind a header that is always present there (magic and expiry;
    the format is private to this implementation). The plain file wins when both exist: each
    write puts the new file in place, then removes the other one."""

    native_ttl = False

    def __init__(self, root: str) -> None:
        self._root = Path(root)
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KbsConfigError(f"storage dir {root} is not usable: {exc.strerror}") from exc

    def _path(self, ns: str, key: str) -> Path:
        _check_ns(ns)
        if not key or "\0" in key or len(key) > 1024:
            raise StorageError("invalid storage key")
        name = key.replace("/", "\\x2F")
        if name in (".", "..") or name.startswith("."):
            raise StorageError("invalid storage key")
        return self._root / ns / name

    @staticmethod
    def _ttl_path(p: Path) -> Path:
        return p.parent / _TTL_DIR / p.name

    @staticmethod
    def _read_limited(p: Path, limit: int) -> bytes | None:
        try:
            return read_bounded(p, limit)
        except FileNotFoundError:
            return None
        except FileTooLarge as exc:
            raise StorageError("stored value too large") from exc
        except (OSError, ValueError) as exc:  # ValueError: not a regular file
            raise StorageError("storage read failed") from exc

    @staticmethod
    def _expired(head: bytes) -> bool:
        """Whether a TTL record's header says it has expired (a malformed one counts as expired)."""
        if len(head) < _TTL_HEAD or not head.startswith(_MAGIC_TTL):
            return True
        (exp,) = _EXP.unpack_from(head, len(_MAGIC_TTL))
        return bool(exp <= time.time())

    def _read(self, p: Path) -> bytes | None:
        data = self._read_limited(p, MAX_VALUE_BYTES)
        if data is not None:
            return data
        tp = self._ttl_path(p)
        rec = self._read_limited(tp, MAX_VALUE_BYTES + _TTL_HEAD)
        if rec is None:
            return None
        if self._expired(rec):
            with contextlib.suppress(OSError):
                tp.unlink()
            return None
        return rec[_TTL_HEAD:]

    def _ttl_live(self, tp: Path) -> bool:
        """Whether the TTL record ``tp`` is unexpired, reading its header only (an expired or
        malformed record is removed)."""
        try:
            with tp.open("rb") as fh:
                head = fh.read(_TTL_HEAD)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError("storage read failed") from exc
        if not self._expired(head):
            return True
        with contextlib.suppress(OSError):
            tp.unlink()
        return False

    async def get(self, ns: str, key: str) -> bytes | None:
        return self._read(self._path(ns, key))

    @staticmethod
    def _write(
        p: Path, chunks: tuple[bytes, ...], *, mtime: float | None = None, exclusive: bool = False
    ) -> bool:
        """Write atomically; ``mtime``: stamp the file (TTL records carry their expiry there, so
        the sweeper needs no read); ``exclusive``: never replace an existing file (False if one is there).
        A plain replace is :func:`coco_common.files.write_atomic` (fsynced); the stamped and
        create-only writes are this store's own (a link of a complete temp file)."""
        p.parent.mkdir(parents=True, exist_ok=True)
        if mtime is None and not exclusive:
            write_atomic(p, b"".join(chunks))
            return True
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for c in chunks:
                    fh.write(c)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            if not exclusive:
                os.replace(tmp, p)
                return True
            try:
                os.link(tmp, p)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        p = self._path(ns, key)
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        try:
            if ttl_s is None:
                self._write(p, (bytes(value),))
                other = self._ttl_path(p)
            else:
                exp = time.time() + ttl_s
                self._write(self._ttl_path(p), (_MAGIC_TTL + _EXP.pack(exp), bytes(value)), mtime=exp)
                other = p
            with contextlib.suppress(FileNotFoundError):
                other.unlink()
        except OSError as exc:
            raise StorageError("storage write failed") from exc

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Create-only (a hard link of a complete temp file: atomic). With a TTL, an expired
        record in the way is removed first."""
        p = self._path(ns, key)
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        try:
            if ttl_s is None:
                return self._write(p, (bytes(value),), exclusive=True)
            tp = self._ttl_path(p)
            self._ttl_live(tp)  # removes an expired record
            exp = time.time() + ttl_s
            return self._write(tp, (_MAGIC_TTL + _EXP.pack(exp), bytes(value)), mtime=exp, exclusive=True)
        except OSError as exc:
            raise StorageError("storage write failed") from exc

    async def delete(self, ns: str, key: str) -> bool:
        p = self._path(ns, key)
        found = False
        for q in (p, self._ttl_path(p)):
            try:
                q.unlink()
                found = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError("storage delete failed") from exc
        return found

    async def keys(self, ns: str) -> list[str]:
        _check_ns(ns)
        d = self._root / ns
        if not d.is_dir():
            return []
        names = {p.name for p in d.iterdir() if not p.name.startswith(".")}
        td = d / _TTL_DIR
        if td.is_dir():
            names.update(p.name for p in td.iterdir() if not p.name.startswith(".") and self._ttl_live(p))
        return sorted(n.replace("\\x2F", "/") for n in names)

    async def purge_expired(self) -> int:
        """Remove expired TTL records; plain values never expire and are not opened. A record's
        mtime is its expiry: only records whose mtime has passed are opened (to read the header)."""
        n = 0
        now = time.time()
        for d in self._root.iterdir() if self._root.is_dir() else []:
            td = d / _TTL_DIR
            if d.name.startswith(".") or not td.is_dir():
                continue
            with os.scandir(td) as it:
                for e in it:
                    if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    if e.stat(follow_symlinks=False).st_mtime > now:
                        continue
                    if not self._ttl_live(Path(e.path)):
                        n += 1
        return n

    async def close(self) -> None:
        return None


class RedisStore:
    """Redis / Valkey: keys ``<prefix><ns>:<key>`` (no prefix by default: trustee's
    ``<namespace>:<key>``), expiry by ``PX``; shared by KBS replicas."""

    native_ttl = True

    def __init__(self, url: str, *, prefix: str = "") -> None:
        import redis.asyncio as aioredis

        self._r = aioredis.from_url(url)
        self._prefix = prefix

    def _k(self, ns: str, key: str) -> str:
        _check_ns(ns)
        return f"{self._prefix}{ns}:{key}"

    async def _do(self, coro: object) -> object:
        import redis

        try:
            return await coro  # type: ignore[misc]
        except (redis.RedisError, OSError) as exc:
            raise StorageError("shared storage unavailable") from exc

    async def get(self, ns: str, key: str) -> bytes | None:
        v = await self._do(self._r.get(self._k(ns, key)))
        return bytes(v) if isinstance(v, bytes | bytearray) else None

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        px = max(1, int(ttl_s * 1000)) if ttl_s is not None else None
        await self._do(self._r.set(self._k(ns, key), value, px=px))

    async def delete(self, ns: str, key: str) -> bool:
        return bool(await self._do(self._r.delete(self._k(ns, key))))

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        px = max(1, int(ttl_s * 1000)) if ttl_s is not None else None
        return bool(await self._do(self._r.set(self._k(ns, key), value, px=px, nx=True)))

    async def keys(self, ns: str) -> list[str]:
        pre = self._k(ns, "")
        out: list[str] = []
        try:
            async for k in self._r.scan_iter(match=pre + "*", count=500):
                out.append(k.decode()[len(pre) :])
        except OSError as exc:
            raise StorageError("shared storage unavailable") from exc
        return sorted(out)

    async def purge_expired(self) -> int:
        return 0  # Redis expires keys itself

    async def ping(self) -> None:
        await self._do(self._r.ping())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._r.aclose()


_JSON_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,1024}$")


def _json_value(text: str) -> bytes:
    """A LocalJson value as trustee's ``URL_SAFE`` engine decodes it: the URL-safe
    alphabet with canonical padding; a damaged or hand-edited value is an error,
    never bytes made up by skipping what does not fit."""
    if len(text) % 4:
        raise ValueError("base64 padding missing")
    return b64url_decode(text)


class LocalJsonStore:
    """trustee's ``LocalJson``: one file per namespace, ``<dir>/<ns>``, holding a JSON object
    of key -> URL-safe base64 (with padding) of the value. Each write replaces the file
    atomically; one process-wide lock orders the read-modify-write cycles."""

    native_ttl = False
    #: the whole namespace is read per call: bound it
    MAX_FILE_BYTES = 256 * 1024 * 1024

    def __init__(self, root: str) -> None:
        self._root = Path(root)
        self._lock = asyncio.Lock()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KbsConfigError(f"storage dir {root} is not usable: {exc.strerror}") from exc

    def _file(self, ns: str) -> Path:
        _check_ns(ns)
        return self._root / ns

    def _load(self, ns: str) -> dict[str, str]:
        data = LocalFsStore._read_limited(self._file(ns), self.MAX_FILE_BYTES)
        if data is None:
            return {}
        doc = strict_loads(data, limit=self.MAX_FILE_BYTES, error=StorageError, what="stored namespace file")
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise StorageError("stored namespace file is not a JSON object of strings")
        return doc

    def _save(self, ns: str, doc: dict[str, str]) -> None:
        try:
            LocalFsStore._write(self._file(ns), (json.dumps(doc, separators=(",", ":")).encode(),))
        except OSError as exc:
            raise StorageError("storage write failed") from exc

    @staticmethod
    def _key(key: str) -> str:
        if not _JSON_KEY.fullmatch(key):
            raise StorageError("invalid storage key")
        return key

    async def get(self, ns: str, key: str) -> bytes | None:
        async with self._lock:
            v = self._load(ns).get(key)
        if v is None:
            return None
        try:
            return _json_value(v)
        except ValueError as exc:
            raise StorageError("stored value is not base64") from exc

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        k = self._key(key)
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        async with self._lock:
            doc = self._load(ns)
            doc[k] = base64.urlsafe_b64encode(bytes(value)).decode()
            self._save(ns, doc)

    async def delete(self, ns: str, key: str) -> bool:
        async with self._lock:
            doc = self._load(ns)
            if doc.pop(key, None) is None:
                return False
            self._save(ns, doc)
            return True

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Create-only: one lock orders this process's read-modify-write cycles."""
        k = self._key(key)
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        async with self._lock:
            doc = self._load(ns)
            if k in doc:
                return False
            doc[k] = base64.urlsafe_b64encode(bytes(value)).decode()
            self._save(ns, doc)
            return True

    async def keys(self, ns: str) -> list[str]:
        async with self._lock:
            return sorted(self._load(ns))

    async def purge_expired(self) -> int:
        return 0

    async def close(self) -> None:
        return None


#: trustee's ``set-up.sql`` table shape, one table per namespace
_PG_CREATE = "CREATE TABLE IF NOT EXISTS {} (value BYTEA, key TEXT PRIMARY KEY)"


class PostgresStore:
    """trustee's ``Postgres`` backend: one table per namespace (``key TEXT PRIMARY KEY,
    value BYTEA``), created when missing. A broken connection (a restarted server) is
    reopened on the next call; a call that fails is reported as :class:`StorageError`."""

    native_ttl = False

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._timeout = connect_timeout_s
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._tables: set[str] = set()

    @classmethod
    def from_config(cls, db: str, username: str, password: str | None, host: str, port: int) -> PostgresStore:
        from psycopg.conninfo import make_conninfo

        kw: dict[str, Any] = {"dbname": db, "user": username, "host": host, "port": port}
        if password is not None:
            kw["password"] = password
        return cls(make_conninfo(os.environ.get("POSTGRES_URL", ""), **kw))

    async def _connection(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._tables.clear()
        self._conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, int(self._timeout))
        )
        return self._conn

    async def _run(self, ns: str, sql: str, args: tuple[Any, ...], fetch: str) -> Any:
        import psycopg
        from psycopg import sql as psql

        _check_ns(ns)
        table = psql.Identifier(ns)
        async with self._lock:
            for attempt in (0, 1):
                try:
                    conn = await self._connection()
                    if ns not in self._tables:
                        await conn.execute(
                            psql.SQL(
                                "CREATE TABLE IF NOT EXISTS {} (value BYTEA, key TEXT PRIMARY KEY)"
                            ).format(table)
                        )
                        self._tables.add(ns)
                    cur = await conn.execute(psql.SQL(sql).format(table), args)
                    if fetch == "one":
                        return await cur.fetchone()
                    if fetch == "all":
                        return await cur.fetchall()
                    return cur.rowcount
                except psycopg.OperationalError as exc:
                    # the server went away (restart, failover): reconnect once, then report
                    if self._conn is not None:
                        with contextlib.suppress(Exception):
                            await self._conn.close()
                    self._conn = None
                    if attempt:
                        raise StorageError("shared storage unavailable") from exc
                except psycopg.Error as exc:
                    raise StorageError("shared storage query failed") from exc
        raise StorageError("shared storage unavailable")  # pragma: no cover - loop always returns

    async def get(self, ns: str, key: str) -> bytes | None:
        row = await self._run(ns, "SELECT value FROM {} WHERE key = %s", (key,), "one")
        return bytes(row[0]) if row is not None and row[0] is not None else None

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if not _JSON_KEY.fullmatch(key):
            raise StorageError("invalid storage key")
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        await self._run(
            ns,
            "INSERT INTO {} (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, bytes(value)),
            "none",
        )

    async def delete(self, ns: str, key: str) -> bool:
        return bool(await self._run(ns, "DELETE FROM {} WHERE key = %s", (key,), "none"))

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        """Create-only (``ON CONFLICT DO NOTHING``: atomic across replicas)."""
        if not _JSON_KEY.fullmatch(key):
            raise StorageError("invalid storage key")
        if len(value) > MAX_VALUE_BYTES:
            raise StorageError("value too large")
        n = await self._run(
            ns,
            "INSERT INTO {} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, bytes(value)),
            "none",
        )
        return bool(n)

    async def keys(self, ns: str) -> list[str]:
        rows = await self._run(ns, "SELECT key FROM {}", (), "all")
        return sorted(str(r[0]) for r in rows)

    async def purge_expired(self) -> int:
        return 0

    async def ping(self) -> None:
        async with self._lock:
            try:
                await self._connection()
            except Exception as exc:
                self._conn = None
                raise StorageError("shared storage unavailable") from exc

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


class EncryptedStore:
    """Seals values of the given namespaces with AES-256-GCM (AAD = namespace and key)."""

    _VERSION = b"\x01"

    def __init__(self, inner: KvStore, key: bytes, namespaces: frozenset[str]) -> None:
        if len(key) != 32:
            raise KbsConfigError("the at-rest key must be 32 bytes")
        self._inner = inner
        self.native_ttl = inner.native_ttl
        self._aead = AESGCM(key)
        self._ns = namespaces

    async def get(self, ns: str, key: str) -> bytes | None:
        v = await self._inner.get(ns, key)
        if v is None or ns not in self._ns:
            return v
        if len(v) < 1 + 12 + 16 or v[:1] != self._VERSION:
            raise StorageError("stored value is not sealed (wrong at-rest key setup?)")
        try:
            return self._aead.decrypt(v[1:13], v[13:], f"{ns}/{key}".encode())
        except InvalidTag as exc:
            raise StorageError("stored value failed authentication") from exc

    def _seal(self, ns: str, key: str, value: bytes) -> bytes:
        if ns not in self._ns:
            return value
        nonce = os.urandom(12)
        return self._VERSION + nonce + self._aead.encrypt(nonce, value, f"{ns}/{key}".encode())

    async def set(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        await self._inner.set(ns, key, self._seal(ns, key, value), ttl_s=ttl_s)

    async def delete(self, ns: str, key: str) -> bool:
        return await self._inner.delete(ns, key)

    async def add(self, ns: str, key: str, value: bytes, *, ttl_s: float | None = None) -> bool:
        return await self._inner.add(ns, key, self._seal(ns, key, value), ttl_s=ttl_s)

    async def keys(self, ns: str) -> list[str]:
        return await self._inner.keys(ns)

    async def purge_expired(self) -> int:
        return await self._inner.purge_expired()

    async def close(self) -> None:
        await self._inner.close()


def load_at_rest_key(path: str) -> bytes:
    try:
        raw = read_bounded(Path(path), 1024)
    except OSError as exc:
        raise KbsConfigError(f"cannot read the at-rest key file: {exc.strerror}") from exc
    except ValueError as exc:  # too large, not a regular file
        raise KbsConfigError(f"cannot read the at-rest key file: {exc}") from exc
    if len(raw) == 32:
        return raw
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KbsConfigError("the at-rest key file must hold 32 raw bytes or 64 hex digits") from exc
    if len(key) != 32:
        raise KbsConfigError("the at-rest key must be 32 bytes")
    return key


def open_store(kind: str, cfg: StorageConfig) -> KvStore:
    """A store of trustee's storage type ``kind`` (canonical name) configured by ``cfg``."""
    if kind == "Memory":
        return MemoryStore()
    if kind == "LocalFs":
        return LocalFsStore(cfg.local_fs_dir)
    if kind == "LocalJson":
        return LocalJsonStore(cfg.local_json_dir)
    if kind == "Redis":
        return RedisStore(cfg.redis_url)
    if kind == "Postgres":
        pg = cfg.postgres
        return PostgresStore.from_config(pg.db, pg.username, pg.password, pg.host, pg.port)
    raise KbsConfigError(f"storage type {kind} not supported")
