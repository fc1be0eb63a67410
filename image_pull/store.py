"""Content-addressed, crash-safe layer store under ``work_dir``.

Layout::

    work_dir/
      layers/<chain-id hex>/fs/          one committed layer in overlay form
      layers/<chain-id hex>/layer.json   its record (digest, diff_id, chain_id, ...)
      staging/<chain-id hex>.<random>/   layers being written (never used by readers)
      locks/<chain-id hex>.lock          flock: one writer per layer, across processes
      images/<manifest digest hex>.json  which layers an image uses (GC roots)
      blobs/<algo>-<hex>                 manifests and configs of recorded images (hash-checked on read)
      bundles/<id>/{upper,work,bundle.json}   overlay upper/work dirs of live bundles (GC roots)

Layers are keyed by *chain id* (the OCI ``ChainID`` of the layer and every
layer below it), not by diff_id alone: a layer's overlay-form directory can
depend on its lowers (a hardlink to a file of a lower layer is copied up).
A layer counts only once its staging directory, with the diff_id checked,
was atomically renamed to ``layers/<key>``; anything else (a crash, kill -9,
ENOSPC) leaves at most a staging directory that the next writer of that key
removes while holding the key's lock. Durability across power loss is not
attempted (no fsync): the work dir in a guest is ephemeral storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from coco_common.files import read_bounded, write_atomic
from coco_common.strict_json import strict_loads
from image_pull.errors import InsufficientSpace, StoreError

__all__ = ["MAX_CACHED_BLOB", "LayerRecord", "LayerStore", "bundle_key", "chain_ids"]

MAX_CACHED_BLOB = 4 << 20
MAX_RECORD = 64 << 10


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI ChainID of each layer prefix (image-spec config.md)."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def bundle_key(bundle_dir: Path) -> str:
    """Lock key of a bundle directory (one pull at a time into it; GC respects it)."""
    return "sha256:" + hashlib.sha256(str(Path(bundle_dir).resolve()).encode()).hexdigest()


def _bundle_id(bundle_dir: Path) -> str:
    """The ``bundles/<id>.*`` name of a bundle directory's state in the store."""
    return hashlib.sha256(str(Path(bundle_dir).resolve()).encode()).hexdigest()[:32]


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


@dataclass(frozen=True)
class LayerRecord:
    chain_id: str
    diff_id: str
    digest: str
    media_type: str
    size: int
    uncompressed_size: int
    # layers unpacked from an encrypted blob: HMAC-SHA256(symkey, KEY_CHECK_LABEL) hex, so a
    # later pull reuses the plaintext only when it unwrapped the same layer key
    key_check: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, untrusted: bytes) -> LayerRecord | None:
        try:
            doc = strict_loads(untrusted)
            if not isinstance(doc, dict):
                return None
            rec = cls(**doc)
        except (ValueError, TypeError):
            return None
        ints = (rec.size, rec.uncompressed_size)
        strs = (rec.chain_id, rec.diff_id, rec.digest, rec.media_type)
        if not all(isinstance(v, int) for v in ints) or not all(isinstance(v, str) for v in strs):
            return None
        return rec if rec.key_check is None or isinstance(rec.key_check, str) else None


class LayerStore:
    def __init__(self, work_dir: Path) -> None:
        self.root = Path(work_dir)
        self.layers = self.root / "layers"
        self.staging = self.root / "staging"
        self.locks = self.root / "locks"
        self.images = self.root / "images"
        self.bundles = self.root / "bundles"
        self.blobs = self.root / "blobs"
        try:
            for d in (self.layers, self.staging, self.locks, self.images, self.bundles, self.blobs):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the layer store in {self.root}: {exc.strerror}") from exc

    # ------------------------------------------------------------ layers
    def layer_dir(self, chain_id: str) -> Path:
        return self.layers / _hex(chain_id)

    def layer_fs(self, chain_id: str) -> Path:
        return self.layer_dir(chain_id) / "fs"

    def has_layer(self, chain_id: str) -> bool:
        return (self.layer_dir(chain_id) / "layer.json").is_file()

    def read_record(self, chain_id: str) -> LayerRecord | None:
        """The committed layer's record, or None when absent or unreadable."""
        try:
            data = read_bounded(self.layer_dir(chain_id) / "layer.json", MAX_RECORD)
        except (OSError, ValueError):  # FileTooLarge is a ValueError
            return None
        return LayerRecord.from_json(data)

    @contextlib.asynccontextmanager
    async def lock(self, chain_id: str) -> AsyncIterator[None]:
        """Exclusive per-layer lock across processes (flock), cancellable while waiting."""
        path = self.locks / f"{_hex(chain_id)}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(
                    f"no space (or no free inodes) left in {self.root} for a lock file"
                ) from exc
            raise StoreError(f"cannot create a lock file in {self.root}: {exc.strerror}") from exc
        try:
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
            yield
        finally:
            os.close(fd)  # releases the flock

    def new_staging(self, chain_id: str) -> Path:
        """Fresh staging dir; call with the key's lock held (old attempts are removed)."""
        key = _hex(chain_id)
        for old in self.staging.glob(f"{key}.*"):
            shutil.rmtree(old, ignore_errors=True)
        d = self.staging / f"{key}.{secrets.token_hex(4)}"
        try:
            d.mkdir()
            (d / "fs").mkdir()
        except OSError as exc:
            shutil.rmtree(d, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # out of blocks, or of inodes
                raise InsufficientSpace(
                    f"no space (or no free inodes) left in {self.root} for a layer; "
                    "free space or run the layer GC"
                ) from exc
            raise StoreError(f"cannot create a staging dir in {self.root}: {exc.strerror}") from exc
        return d

    def commit(self, staging: Path, record: LayerRecord) -> Path:
        """Atomically publish a staging dir as layer ``record.chain_id``."""
        try:
            (staging / "layer.json").write_bytes(record.to_json())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(f"no space (or no free inodes) left in {self.root}") from exc
            raise StoreError(f"cannot commit layer {record.chain_id}: {exc.strerror}") from exc
        final = self.layer_dir(record.chain_id)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                shutil.rmtree(staging, ignore_errors=True)  # someone committed it meanwhile
            else:
                raise StoreError(f"cannot commit layer {record.chain_id}: {exc.strerror}") from exc
        return final / "fs"

    def in_live_bundle(self, chain_id: str) -> bool:
        """Whether a recorded overlay bundle uses the layer as a lower."""
        for f in self.bundles.glob("*/bundle.json"):
            try:
                doc = strict_loads(read_bounded(f, MAX_RECORD * 16))
            except (OSError, ValueError):
                return True  # cannot tell: assume it is used
            if isinstance(doc, dict) and chain_id in doc.get("layers", []):
                return True
        return False

    def evict(self, chain_id: str) -> None:
        """Remove a committed layer (call with its lock held): invisible first, then deleted."""
        trash = self.staging / f"gc.{_hex(chain_id)}.{secrets.token_hex(4)}"
        try:
            os.rename(self.layer_dir(chain_id), trash)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot remove damaged layer {chain_id}: {exc.strerror}") from exc
        shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def discard(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------ small blobs (manifests, configs)
    def cache_get(self, digest: str) -> bytes | None:
        """A cached manifest/config by digest, or None; content is re-hashed on every read."""
        algo, _, hexpart = digest.partition(":")
        if algo not in ("sha256", "sha512"):
            return None
        try:
            data = read_bounded(self.blobs / f"{algo}-{hexpart}", MAX_CACHED_BLOB)
        except (OSError, ValueError):
            return None
        if hashlib.new(algo, data).hexdigest() != hexpart:
            return None
        return data

    def cache_put(self, digest: str, data: bytes) -> None:
        algo, _, hexpart = digest.partition(":")
        if len(data) > MAX_CACHED_BLOB or hashlib.new(algo, data).hexdigest() != hexpart:
            return
        with contextlib.suppress(OSError):  # a cache: failing to fill it is not an error
            write_atomic(self.blobs / f"{algo}-{hexpart}", data, mode=0o644, fsync=False)

    # ------------------------------------------------------------ images and GC roots
    def record_image(
        self,
        manifest_digest: str,
        ref: str,
        config_digest: str,
        chain: list[str],
        *,
        index_digest: str | None = None,
    ) -> None:
        doc = {
            "reference": ref,
            "manifest_digest": manifest_digest,
            "config_digest": config_digest,
            "index_digest": index_digest,
            "layers": chain,
        }
        try:
            # a GC root: the rename makes it all-or-nothing; a crash loses only the record
            data = json.dumps(doc, sort_keys=True).encode()
            write_atomic(self.images / f"{_hex(manifest_digest)}.json", data, mode=0o644, fsync=False)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(f"no space left in {self.root} to record the image") from exc
            raise StoreError(f"cannot record the image in {self.root}: {exc.strerror}") from exc

    def remove_image(self, manifest_digest: str) -> bool:
        try:
            (self.images / f"{_hex(manifest_digest)}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def _referenced_blobs(self) -> set[str]:
        keep: set[str] = set()
        for f in self.images.glob("*.json"):
            try:
                doc = strict_loads(read_bounded(f, MAX_RECORD * 16))
            except (OSError, ValueError):
                continue
            for k in ("manifest_digest", "config_digest", "index_digest"):
                if isinstance(doc.get(k), str):
                    keep.add(doc[k])
        return keep

    def _referenced(self) -> set[str]:
        keep: set[str] = set()
        for f in list(self.images.glob("*.json")) + list(self.bundles.glob("*/bundle.json")):
            try:
                doc = strict_loads(read_bounded(f, MAX_RECORD * 16))
                keep.update(_hex(c) for c in doc.get("layers", []) if isinstance(c, str) and ":" in c)
            except (OSError, ValueError):
                continue
        return keep

    def new_bundle_state(self, bundle_dir: Path, chain: list[str]) -> Path:
        """``bundles/<id>.<random>``: the overlay upper/work dirs of a bundle about to be
        mounted, with ``bundle.json`` naming the bundle and its layers (a GC root)."""
        d = self.bundles / f"{_bundle_id(bundle_dir)}.{secrets.token_hex(4)}"
        d.mkdir()
        doc = {"bundle": str(bundle_dir.resolve()), "layers": chain}
        write_atomic(d / "bundle.json", json.dumps(doc).encode(), mode=0o644, fsync=False)
        return d

    def bundle_states(self, bundle_dir: Path) -> list[Path]:
        """Every ``bundles/<id>.*`` directory of ``bundle_dir`` (overlay state, copy records)."""
        return list(self.bundles.glob(f"{_bundle_id(bundle_dir)}.*"))

    @contextlib.contextmanager
    def copying(self, bundle_dir: Path) -> Iterator[None]:
        """While a flattened copy into ``bundle_dir`` runs (see :meth:`begin_copy`)."""
        rec = self.begin_copy(bundle_dir)
        try:
            yield
        finally:
            self.end_copy(rec)

    def begin_copy(self, bundle_dir: Path) -> Path:
        """Record that a flattened copy into ``bundle_dir`` starts (call with the bundle's
        lock held): if the process dies mid-copy, :meth:`gc` finds the partial
        ``<bundle>/.rootfs.*`` through this record. :meth:`end_copy` drops it."""
        d = self.bundles / f"{_bundle_id(bundle_dir)}.copy-{secrets.token_hex(4)}"
        try:
            d.mkdir()
            doc = {"bundle": str(bundle_dir.resolve())}
            write_atomic(d / "copying.json", json.dumps(doc).encode(), mode=0o644, fsync=False)
        except OSError as exc:
            shutil.rmtree(d, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(f"no space (or no free inodes) left in {self.root}") from exc
            raise StoreError(f"cannot record the bundle copy in {self.root}: {exc.strerror}") from exc
        return d

    @staticmethod
    def end_copy(record: Path) -> None:
        shutil.rmtree(record, ignore_errors=True)

    def _sweep_dead_copies(self) -> None:
        """Partial flattened copies of pulls that died mid-copy (their bundle lock is free)."""
        for rec in self.bundles.glob("*/copying.json"):
            try:
                bundle = Path(str(strict_loads(read_bounded(rec, MAX_RECORD * 16))["bundle"]))
            except (OSError, ValueError, KeyError, TypeError):
                shutil.rmtree(rec.parent, ignore_errors=True)
                continue
            fd = os.open(
                self.locks / f"{_hex(bundle_key(bundle))}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a pull may be copying right now
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                for stale in bundle.glob(".rootfs.*"):
                    if stale.is_dir() and not stale.is_symlink() and not os.path.ismount(stale):
                        shutil.rmtree(stale, ignore_errors=True)
                shutil.rmtree(rec.parent, ignore_errors=True)
            finally:
                os.close(fd)

    def _sweep_dead_bundles(self) -> None:
        """Drop overlay records whose rootfs is no longer mounted (unmounted by someone else)."""
        self._sweep_dead_copies()
        for rec in self.bundles.glob("*/bundle.json"):
            try:
                doc = strict_loads(read_bounded(rec, MAX_RECORD * 16))
                rootfs = Path(str(doc["bundle"])) / "rootfs"
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if os.path.ismount(rootfs):
                continue
            key = bundle_key(Path(str(doc["bundle"])))
            fd = os.open(self.locks / f"{_hex(key)}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a pull may be mounting it right now
                if not os.path.ismount(rootfs):
                    shutil.rmtree(rec.parent, ignore_errors=True)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)

    def gc(self) -> list[str]:
        """Remove layers no image record or live bundle references, and stale staging dirs.

        Returns the removed chain-id hex keys. A layer being written right now is
        in staging under its lock and is not touched; staging dirs are removed
        only when their key's lock is free.
        """
        self._sweep_dead_bundles()
        keep = self._referenced()
        removed: list[str] = []
        for d in self.layers.iterdir():
            if d.name in keep:
                continue
            fd = os.open(self.locks / f"{d.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a pull is using this layer right now
                if d.name in self._referenced():
                    continue  # a pull recorded it meanwhile
                trash = self.staging / f"gc.{d.name}.{secrets.token_hex(4)}"
                try:
                    os.rename(d, trash)  # atomically invisible first
                except OSError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(d.name)
            finally:
                os.close(fd)
        wanted = self._referenced_blobs()
        for b in self.blobs.iterdir():
            if b.name.replace("-", ":", 1) not in wanted:
                b.unlink(missing_ok=True)
        for s in self.staging.iterdir():
            key = s.name.split(".", 1)[0]
            lock = self.locks / f"{key}.lock"
            if key == "gc":
                shutil.rmtree(s, ignore_errors=True)
                continue
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(s, ignore_errors=True)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        return removed

    # ------------------------------------------------------------ space
    def check_space(self, needed: int, *, reserve: int = 8 << 20) -> None:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise StoreError(f"cannot stat the work dir: {exc.strerror}") from exc
        free = st.f_bavail * st.f_frsize
        if free < needed + reserve:
            raise InsufficientSpace(
                f"not enough space in {self.root}: need about {(needed + reserve) >> 20} MiB, "
                f"{free >> 20} MiB free; free space or run the layer GC"
            )
