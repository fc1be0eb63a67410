"""The pull engine: reference -> verified manifest/config -> layers -> bundle.

One streaming pass per layer, never writing the compressed blob to disk and
never holding a layer in memory::

    registry GET (event loop: sha256 of the compressed bytes, size check, Range resume)
      -> ChunkPipe -> [decrypt hook] -> decompress -> diff_id hash -> unpack (worker thread)
      -> staging dir -> (compressed digest + diff_id verified) -> atomic rename into the store

Layers run in parallel (``max_concurrent_layers``), each under a cross-process
lock on its store key so concurrent pulls never download a layer twice. The
rootfs appears only after every layer committed and the policy accepted the
image; a failed pull leaves no populated rootfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import ssl
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from image_pull import bundle as _bundle
from image_pull.auth import AuthFile
from image_pull.budget import UnpackBudget
from image_pull.errors import (
    AuthError,
    BundleError,
    DecryptionError,
    DigestMismatch,
    ImagePullError,
    InsufficientSpace,
    ManifestError,
    NotFound,
    PullTimeout,
    RateLimited,
    RegistryError,
    StoreError,
    TooLarge,
    UnpackError,
)
from image_pull.hooks import KeyUnwrapper, LayerDecryptor, PolicyContext
from image_pull.layer_worker import _MissingHardlinkTarget, _unpack
from image_pull.manifest import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    layer_compression,
    parse_config,
    parse_manifest_document,
)
from image_pull.ocicrypt.layer import DecryptingReader, LayerDecrypter, LayerKey, is_encrypted
from image_pull.progress import ProgressEvent
from image_pull.reference import Reference, is_short_name, parse_reference
from image_pull.registries_conf import Candidate, RegistryConfig
from image_pull.registry import FetchedManifest, RegistryClient, RetryPolicy
from image_pull.store import LayerRecord, LayerStore, bundle_key, chain_ids
from image_pull.stream import ChunkPipe, CountingReader, HashingReader, PipeAborted
from image_pull.trust.evaluate import TrustPolicy
from image_pull.unpack import open_decompressed

__all__ = ["DEFAULT_PULL_TIMEOUT", "ImagePuller", "ProxyConfig", "PullResult", "PullerConfig"]

log = logging.getLogger("image_pull.puller")

DEFAULT_MAX_LAYER_BYTES = 64 << 30
#: seconds a pull may take when nobody says otherwise (CLI, CDH): a registry that
#: trickles must not hold a pull, and CDH's pull lock, forever
DEFAULT_PULL_TIMEOUT = 1800.0
#: free space asked for up front per compressed byte still to fetch (a typical gzip ratio)
EXPECTED_EXPANSION = 2

# layer keys unwrapped for the current pull (set in _pull, seen by its layer tasks)
_LAYER_KEYS: contextvars.ContextVar[dict[tuple[str, str], LayerKey]] = contextvars.ContextVar("_LAYER_KEYS")
# the disk budget of the current pull (set in _pull_layers, seen by its layer tasks)
_BUDGET: contextvars.ContextVar[UnpackBudget] = contextvars.ContextVar("_BUDGET")


def _key_check(key: LayerKey) -> str:
    """Proof of holding a layer key, storable in the clear (a MAC under the key)."""
    return hmac.new(key.symkey, b"image_pull layer store key check v1", hashlib.sha256).hexdigest()


def _key_id(desc: Descriptor) -> tuple[str, str]:
    return desc.digest, repr(sorted(desc.annotations.items()))


def _redact_userinfo(url: str | None) -> str | None:
    if url is None or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}" if sep else "***"


@dataclass(frozen=True, repr=False)
class ProxyConfig:
    """HTTP(S) proxies for registry traffic. ``no_proxy`` entries: ``host``, ``host:port``,
    ``.domain``/``*.domain``/``domain`` (the domain and its subdomains), ``*`` (no proxy at all).
    CIDR ranges are not supported. The environment is never consulted."""

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()

    def __repr__(self) -> str:  # proxy URLs may carry user:password
        return (
            f"ProxyConfig(https_proxy={_redact_userinfo(self.https_proxy)!r}, "
            f"http_proxy={_redact_userinfo(self.http_proxy)!r}, no_proxy={self.no_proxy!r})"
        )

    def mounts(self, verify: ssl.SSLContext) -> dict[str, httpx.AsyncBaseTransport]:
        m: dict[str, httpx.AsyncBaseTransport] = {}
        for entry in self.no_proxy:
            e = entry.strip()
            if not e:
                continue
            if e == "*":
                return {}
            dom = e.removeprefix("*.").removeprefix(".")
            direct = httpx.AsyncHTTPTransport(verify=verify)
            m[f"all://{dom}"] = direct  # the host itself (host[:port] entries too)
            if not dom.replace(".", "").isdigit() and ":" not in dom:
                m[f"all://*.{dom}"] = direct  # and its subdomains, as curl's no_proxy does
        if self.https_proxy:
            m["https://"] = httpx.AsyncHTTPTransport(proxy=self.https_proxy, verify=verify)
        if self.http_proxy:
            m["http://"] = httpx.AsyncHTTPTransport(proxy=self.http_proxy, verify=verify)
        return m


@dataclass(frozen=True)
class PullerConfig:
    work_dir: Path  # layer store + metadata live here
    auth_json: bytes | None = field(default=None, repr=False)  # containers auth.json contents
    extra_root_certs: tuple[bytes, ...] = ()  # PEM
    insecure_registries: frozenset[str] = frozenset()  # host[:port] allowed over plain HTTP
    registry_config: RegistryConfig | None = None  # registries.conf subset
    proxy: ProxyConfig | None = None
    max_concurrent_layers: int = 3
    signature_policy: bytes | None = None  # containers-policy.json contents
    registries_d: Path | None = None
    decryption_keys: tuple[bytes, ...] = field(default=(), repr=False)  # PEM private keys (ocicrypt JWE)
    key_provider: KeyUnwrapper | None = None  # ocicrypt key-provider hook (CDH UnWrapKey)
    resource_getter: Callable[[str], Awaitable[bytes]] | None = None  # resolves kbs:// URIs
    # --- beyond the agreed API (all optional) ---
    platform: str | None = None  # "os/arch[/variant]"; default: this machine
    snapshotter: str = "auto"  # "overlay", "copy" (flattened), or "auto" (overlay, else copy)
    pull_timeout: float | None = DEFAULT_PULL_TIMEOUT  # seconds for the whole pull (None: no deadline)
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES  # uncompressed size limit per layer
    # uncompressed bytes one pull may write, all layers together (None: the work dir's
    # free space less image_pull.budget.RESERVE when the pull starts)
    max_unpacked_bytes: int | None = None
    unpack_workers: str = "process"  # "process": one worker process per layer (uses more CPUs); "thread"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sigstore_config: bytes | None = None  # registries.d YAML given inline (CDH [image] sigstore_config)


@dataclass(frozen=True)
class PullResult:
    manifest_digest: str
    config_digest: str
    image_ref: str
    layers: int
    bytes_downloaded: int
    rootfs: Path
    index_digest: str | None = None
    layers_cached: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Resolved:
    cand: Candidate
    manifest: Manifest
    manifest_bytes: bytes
    manifest_digest: str
    index_digest: str | None
    config: ImageConfig
    config_digest: str


def _ssl_context(extra: tuple[bytes, ...]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for pem in extra:
        try:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError):
            raise RegistryError("an extra root certificate is not a valid PEM certificate") from None
    return ctx


def _unwrap_group(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    flat: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for x in e.exceptions:
                walk(x)
        else:
            flat.append(e)

    walk(eg)
    for e in flat:
        if isinstance(e, ImagePullError) and not isinstance(e, PipeAborted):
            return e
    for e in flat:
        if not isinstance(e, asyncio.CancelledError):
            return e
    return flat[0] if flat else eg


# ---------------------------------------------------------------------- unpack helpers
_F_SETPIPE_SZ = 1031
_FATAL_REGISTRY_ERRORS = (AuthError, NotFound, RateLimited, TooLarge)
_WORKER_ERRORS: dict[str, type[ImagePullError]] = {
    "InsufficientSpace": InsufficientSpace,
    "DigestMismatch": DigestMismatch,
    "DecryptionError": DecryptionError,
    "_MissingHardlinkTarget": _MissingHardlinkTarget,
}


def _worker_error(doc: dict[str, Any]) -> ImagePullError:
    name = str(doc.get("error", ""))
    msg = str(doc.get("message", "layer worker failed"))[:500]
    return _WORKER_ERRORS.get(name, UnpackError)(msg)


class _ConsumerStopped(Exception):
    """The unpacker ended (with its own error) while the download was still waiting."""


async def _unless_done(download: Awaitable[int], consumer: asyncio.Future[Any]) -> int:
    """Run ``download`` unless ``consumer`` (the unpacker) finishes first: an unpacker
    that failed must not wait for a registry that holds the connection open."""
    task = asyncio.ensure_future(download)
    try:
        await asyncio.wait({task, consumer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise _ConsumerStopped


def _is_whiteout(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _find_in_lowers(rel: str, lowers_top_first: list[Path]) -> tuple[Path, Path] | None:
    """(layer, path) of the file ``rel`` as overlayfs would show it from the lowers."""
    parts = rel.split("/")
    for low in lowers_top_first:
        hidden_below = False
        cur = low
        for k, p in enumerate(parts):
            cur = cur / p
            if _is_whiteout(cur):
                return None
            if k < len(parts) - 1:
                if os.path.islink(cur):
                    raise UnpackError(f"hardlink target {rel[:80]!r} goes through a symlink")
                if _opaque(cur):
                    hidden_below = True
        if (os.path.lexists(cur) and not os.path.isdir(cur)) or os.path.islink(cur):
            return low, cur
        if hidden_below:
            return None
    return None


def _copy_up_links(
    layer_fs: Path, deferred: tuple[tuple[str, str], ...], lowers_top_first: list[Path]
) -> None:
    """Make hardlinks to lower-layer files the way overlayfs would: copy the target up, then link."""
    for link_rel, target_rel in deferred:
        dst_target = layer_fs / target_rel
        if not os.path.lexists(dst_target):
            found = _find_in_lowers(target_rel, lowers_top_first)
            if found is None:
                raise UnpackError(f"hardlink target {target_rel[:80]!r} does not exist")
            low, src = found
            # parents, with the lower directories' metadata
            cur_dst, cur_src = layer_fs, low
            for p in target_rel.split("/")[:-1]:
                cur_dst, cur_src = cur_dst / p, cur_src / p
                if not os.path.lexists(cur_dst):
                    st = os.lstat(cur_src) if os.path.isdir(cur_src) else None
                    os.mkdir(cur_dst, 0o755)
                    if st is not None:
                        os.chown(cur_dst, st.st_uid, st.st_gid)
                        os.chmod(cur_dst, stat.S_IMODE(st.st_mode))
                elif not os.path.isdir(cur_dst) or os.path.islink(cur_dst):
                    raise UnpackError(f"cannot place hardlink target {target_rel[:80]!r}")
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst_target)
            else:
                _bundle.copy_file_sparse(src, dst_target)
                os.chown(dst_target, st.st_uid, st.st_gid)
                os.chmod(dst_target, stat.S_IMODE(st.st_mode))
                for name in os.listxattr(src, follow_symlinks=False):
                    os.setxattr(dst_target, name, os.getxattr(src, name, follow_symlinks=False))
            os.utime(dst_target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        link = layer_fs / link_rel
        if os.path.lexists(link):
            os.unlink(link)
        os.link(dst_target, link, follow_symlinks=False)


# ---------------------------------------------------------------------- the puller
class ImagePuller:
    def __init__(self, config: PullerConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        if config.max_concurrent_layers < 1:
            raise ValueError("max_concurrent_layers must be at least 1")
        if config.unpack_workers not in ("process", "thread"):
            raise ValueError("unpack_workers must be process or thread")
        if config.snapshotter not in ("auto", "overlay", "copy"):
            raise ValueError("snapshotter must be auto, overlay or copy")
        self._owns_http = http is None
        if http is None:
            verify = _ssl_context(config.extra_root_certs)
            mounts = config.proxy.mounts(verify) if config.proxy else {}
            http = httpx.AsyncClient(
                verify=verify,
                mounts=mounts or None,
                timeout=httpx.Timeout(60.0, connect=30.0),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                trust_env=False,
                follow_redirects=False,
            )
        self._http = http
        auth = AuthFile.from_bytes(config.auth_json) if config.auth_json is not None else None
        insecure = set(config.insecure_registries)
        if config.registry_config is not None:
            for r in config.registry_config.registries:
                if r.insecure and r.location:
                    insecure.add(r.location.split("/", 1)[0])
                for m in r.mirrors:
                    if m.insecure:
                        insecure.add(m.location.split("/", 1)[0])
        self.registry = RegistryClient(
            self._http, auth=auth, insecure_registries=frozenset(insecure), retry=config.retry
        )
        self.store = LayerStore(config.work_dir)
        self.platform = Platform.parse(config.platform) if config.platform else Platform.host()
        self._trust: TrustPolicy | None = None  # built on first use (image_pull.trust)
        self._decrypter: LayerDecrypter | None = None  # built on first use (image_pull.ocicrypt)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ImagePuller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public
    async def pull(
        self,
        image_ref: str,
        bundle_dir: Path,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> PullResult:
        emit = progress or (lambda _e: None)
        t0 = time.monotonic()
        try:
            if self.config.pull_timeout is not None:
                async with asyncio.timeout(self.config.pull_timeout):
                    return await self._pull(image_ref, Path(bundle_dir), emit, t0)
            return await self._pull(image_ref, Path(bundle_dir), emit, t0)
        except TimeoutError:
            raise PullTimeout(
                f"pull of {image_ref[:120]} did not finish within {self.config.pull_timeout} s"
            ) from None
        except OSError as exc:  # a file operation no step translated: still one typed error
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(
                    f"no space (or no free inodes) left for the pull of {image_ref[:120]}"
                ) from None
            raise StoreError(f"pull of {image_ref[:120]}: {exc.strerror or type(exc).__name__}") from None

    async def release_bundle(self, bundle_dir: Path) -> None:
        """Unmount/remove ``<bundle>/rootfs`` and its ``config.json``; drop its GC root in the store."""
        bundle_dir = Path(bundle_dir)
        rootfs = bundle_dir / "rootfs"
        async with self.store.lock(bundle_key(bundle_dir)):
            if os.path.ismount(rootfs):
                await asyncio.to_thread(_bundle.unmount, rootfs)
            key = hashlib.sha256(str(bundle_dir.resolve()).encode()).hexdigest()[:32]
            for d in self.store.bundles.glob(f"{key}.*"):
                shutil.rmtree(d, ignore_errors=True)
            if rootfs.is_dir() and not os.path.ismount(rootfs):
                shutil.rmtree(rootfs, ignore_errors=True)
            _bundle.remove_stale_copies(rootfs)
            with contextlib.suppress(FileNotFoundError):
                (bundle_dir / "config.json").unlink()

    # ------------------------------------------------------------------ resolve
    async def _resolve(self, cand: Candidate) -> _Resolved:
        ref = cand.reference
        reg = self.registry
        fetched = await self._manifest(ref, None)
        doc = parse_manifest_document(fetched.body, fetched.content_type)
        index_digest: str | None = None
        index_body = b""
        if isinstance(doc, Index):
            index_digest, index_body = fetched.digest, fetched.body
            entry = doc.select(self.platform)
            fetched = await self._manifest(ref, entry.digest)
            if len(fetched.body) != entry.size:
                raise DigestMismatch("platform manifest size differs from its index entry")
            doc = parse_manifest_document(fetched.body, fetched.content_type)
            if isinstance(doc, Index):
                raise ManifestError("nested image indexes are not supported")
        manifest = doc
        cfg_bytes = self.store.cache_get(manifest.config.digest)
        if cfg_bytes is None or len(cfg_bytes) != manifest.config.size:
            cfg_bytes = await reg.get_blob(ref, manifest.config.digest, manifest.config.size)
        config = parse_config(cfg_bytes)
        if index_digest is not None:
            self.store.cache_put(index_digest, index_body)
        self.store.cache_put(fetched.digest, fetched.body)
        self.store.cache_put(manifest.config.digest, cfg_bytes)
        if len(config.diff_ids) != len(manifest.layers):
            raise ManifestError(
                f"image config lists {len(config.diff_ids)} diff_ids for {len(manifest.layers)} layers"
            )
        for d in manifest.layers:
            layer_compression(d.media_type)  # unsupported types fail before any download
            if d.urls:
                log.info("layer %s has foreign urls; fetching it from the registry only", d.digest)
        return _Resolved(
            cand, manifest, fetched.body, fetched.digest, index_digest, config, manifest.config.digest
        )

    async def _manifest(self, ref: Reference, digest: str | None) -> FetchedManifest:
        """A manifest by digest, or by the reference's tag/digest when ``digest`` is None.

        Manifests of recorded images are cached by digest in the store (hash-checked
        on read). For a tag, a HEAD resolves the digest first (Docker Hub does not count
        it as a pull); only a digest we do not hold is fetched with GET.
        """
        target = digest or ref.digest
        if target is None:
            target = await self.registry.head_manifest(ref)
        if target is not None:
            cached = self.store.cache_get(target)
            if cached is not None:
                return FetchedManifest(cached, None, target)
        return await self.registry.get_manifest(ref, digest)

    async def _resolve_any(self, ref: Reference, *, short_name: bool = False) -> _Resolved:
        if self.config.registry_config is not None:
            cands = self.config.registry_config.candidates(ref, unqualified=short_name)
        else:
            cands = [Candidate(ref, False, "original")]
        errors: list[ImagePullError] = []
        for cand in cands:
            try:
                return await self._resolve(cand)
            except (RegistryError, ManifestError, DigestMismatch) as exc:
                log.info("pull from %s failed: %s", cand.reference, exc)
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        kinds = {type(e) for e in errors}
        cls = kinds.pop() if len(kinds) == 1 else RegistryError
        raise cls("; ".join(f"{c.reference.name}: {e}" for c, e in zip(cands, errors, strict=True))[:1000])

    # ------------------------------------------------------------------ hooks
    async def _check_policy(self, ctx: PolicyContext) -> None:
        # Runs for cached images too, before anything becomes visible in the bundle.
        if self.config.signature_policy is None:
            return
        if self._trust is None:
            self._trust = TrustPolicy(
                self.config.signature_policy,
                registries_d=self.config.registries_d,
                sigstore_config=self.config.sigstore_config,
                resource_getter=self.config.resource_getter,
                http=self._http,
            )
        await self._trust.check(ctx)

    async def _unwrap_layer_keys(self, manifest: Manifest) -> dict[tuple[str, str], LayerKey]:
        """Unwrap every encrypted layer's key up front: a missing key fails the pull before
        any download, and for cached layers too."""
        keys: dict[tuple[str, str], LayerKey] = {}
        for desc in manifest.layers:
            if not is_encrypted(desc):
                continue
            if self._decrypter is None:
                self._decrypter = LayerDecrypter(self.config.decryption_keys, self.config.key_provider)
            keys[_key_id(desc)] = await self._decrypter.unwrap(desc)
        return keys

    async def _decryptor_for(self, desc: Descriptor) -> LayerDecryptor | None:
        _comp, encrypted = layer_compression(desc.media_type)
        if not encrypted:
            return None
        key = _LAYER_KEYS.get({}).get(_key_id(desc))
        if key is None:
            if self._decrypter is None:
                self._decrypter = LayerDecrypter(self.config.decryption_keys, self.config.key_provider)
            key = await self._decrypter.unwrap(desc)
        layer_key = key

        def decryptor(ciphertext: BinaryIO) -> BinaryIO:
            return DecryptingReader(ciphertext, layer_key)  # type: ignore[return-value]

        return decryptor

    # ------------------------------------------------------------------ layers
    def _consume(
        self,
        pipe: ChunkPipe,
        desc: Descriptor,
        decryptor: LayerDecryptor | None,
        dest: Path,
        diff_algo: str,
        flatten: bool,
        budget: UnpackBudget | None,
    ) -> tuple[str, int, tuple[tuple[str, str], ...]]:
        try:
            received = CountingReader(pipe)  # type: ignore[arg-type]
            src: BinaryIO = received  # type: ignore[assignment]
            if decryptor is not None:
                src = decryptor(src)
            try:
                dec = open_decompressed(src, desc.media_type.removesuffix("+encrypted"))
                key = str(dest)
                hr = HashingReader(
                    dec,
                    diff_algo,
                    limit=self.config.max_layer_bytes,
                    source=received,
                    progress=(lambda n: budget.update(key, n)) if budget is not None else None,
                    budget_left=budget.remaining(key) if budget is not None else None,
                    budget_message=budget.exceeded() if budget is not None else "",
                )
                deferred = _unpack(hr, dest, desc.size, flatten=flatten)  # type: ignore[arg-type]
                hr.drain()
            except (ImagePullError, OSError):
                if isinstance(src, DecryptingReader):
                    src.check_after_failure()  # report tampering (HMAC) rather than its symptom
                raise
            if isinstance(src, DecryptingReader):
                src.drain()  # the HMAC covers the whole ciphertext: read it to EOF before committing
                if not src.verified:
                    raise DecryptionError(f"layer {desc.digest}: ciphertext was not verified")
            if budget is not None:
                budget.update(str(dest), hr.count)
            return hr.digest(), hr.count, deferred
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(
                    f"no space left in {self.store.root} while unpacking a layer"
                ) from None
            raise UnpackError(f"layer {desc.digest}: {exc.strerror or exc}") from None
        except UnpackError as exc:
            # the unpacker translates ENOSPC into its own error; keep the space error distinct
            if "no space left" in str(exc):
                raise InsufficientSpace(
                    f"no space left in {self.store.root} while unpacking a layer"
                ) from exc
            raise
        finally:
            pipe.consumer_done()

    async def _fetch_layer(
        self,
        ref: Reference,
        i: int,
        desc: Descriptor,
        diff_id: str,
        dest: Path,
        emit: Callable[[ProgressEvent], None],
        *,
        flatten: bool = False,
    ) -> tuple[int, int, tuple[tuple[str, str], ...]]:
        decryptor = await self._decryptor_for(desc)
        diff_algo = diff_id.split(":", 1)[0]
        t0 = time.monotonic()
        got = 0
        last = 0.0

        def on_bytes(n: int) -> None:
            nonlocal got, last
            got += n
            now = time.monotonic()
            if now - last >= 0.25:
                last = now
                el = now - t0
                emit(
                    ProgressEvent(
                        "layer-progress", i, desc.digest, got, desc.size, got / el if el else 0.0, el
                    )
                )

        emit(ProgressEvent("layer-start", i, desc.digest, 0, desc.size))
        if decryptor is None and self.config.unpack_workers == "process" and sys.executable:
            nbytes, (got_diff, usize, deferred) = await self._via_process(
                ref, desc, diff_algo, dest, flatten, on_bytes
            )
        else:
            nbytes, (got_diff, usize, deferred) = await self._via_thread(
                ref, desc, decryptor, diff_algo, dest, flatten, on_bytes
            )
        if got_diff != diff_id:
            raise DigestMismatch(
                f"layer {desc.digest}: uncompressed content hashes to {got_diff}, config says {diff_id}"
            )
        el = time.monotonic() - t0
        emit(ProgressEvent("layer-done", i, desc.digest, nbytes, desc.size, nbytes / el if el else 0.0, el))
        return nbytes, usize, deferred

    async def _via_thread(
        self,
        ref: Reference,
        desc: Descriptor,
        decryptor: LayerDecryptor | None,
        diff_algo: str,
        dest: Path,
        flatten: bool,
        on_bytes: Callable[[int], None],
    ) -> tuple[int, tuple[str, int, tuple[tuple[str, str], ...]]]:
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop)
        budget = _BUDGET.get(None)
        fut = loop.run_in_executor(
            None, self._consume, pipe, desc, decryptor, dest, diff_algo, flatten, budget
        )
        try:
            try:
                nbytes = await _unless_done(
                    self.registry.stream_blob(ref, desc.digest, desc.size, pipe.put, on_bytes=on_bytes), fut
                )
            except _ConsumerStopped:
                raise PipeAborted("the unpacker stopped") from None
            pipe.finish()
        except PipeAborted:
            # the consumer failed first: its error is the real one
            pipe.abort(PipeAborted("download stopped"))
            await asyncio.wait([fut])
            exc = fut.exception()
            if exc is not None:
                raise exc from None
            raise
        except BaseException as exc:
            pipe.abort(exc)
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)
            raise
        try:
            return nbytes, await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await fut
            raise

    async def _via_process(
        self,
        ref: Reference,
        desc: Descriptor,
        diff_algo: str,
        dest: Path,
        flatten: bool,
        on_bytes: Callable[[int], None],
    ) -> tuple[int, tuple[str, int, tuple[tuple[str, str], ...]]]:
        """Decompress + diff_id + unpack in a worker process fed through a pipe (uses another CPU)."""
        budget = _BUDGET.get(None)
        job = {
            "media_type": desc.media_type,
            "diff_algo": diff_algo,
            "dest": str(dest),
            "compressed_size": desc.size,
            "max_layer_bytes": self.config.max_layer_bytes,
            "flatten": flatten,
            "progress": budget is not None,
            "budget_left": budget.remaining(str(dest)) if budget is not None else None,
            "budget_message": budget.exceeded() if budget is not None else "",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # no cwd on sys.path: modules in the caller's directory must not run as the worker
            "-m",
            "image_pull.layer_worker",
            json.dumps(job),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        pipe_fd = proc.stdin.get_extra_info("pipe")
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(pipe_fd.fileno(), _F_SETPIPE_SZ, 1 << 20)
        stdin = proc.stdin
        over_budget: list[ImagePullError] = []

        async def bounded(reader: asyncio.StreamReader, keep: int) -> bytes:
            """Read a worker stream to EOF concurrently (so it never blocks), keeping the tail."""
            buf = b""
            while chunk := await reader.read(1 << 16):
                buf = (buf + chunk)[-keep:]
            return buf

        async def results(reader: asyncio.StreamReader) -> bytes:
            """The worker's stdout: progress lines go to the budget, the last line is kept."""
            pending = b""
            last = b""
            while chunk := await reader.read(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                pending = pending[-(1 << 20) :]
                for line in lines:
                    if line.startswith(b'{"progress":'):
                        try:
                            n = int(json.loads(line)["progress"])
                        except (ValueError, KeyError, TypeError):
                            continue
                        if budget is not None and not over_budget:
                            try:
                                budget.update(str(dest), n)
                            except ImagePullError as exc:
                                over_budget.append(exc)
                                if proc.returncode is None:
                                    proc.kill()
                    elif line.strip():
                        last = line[-(1 << 20) :]
            return pending if pending.strip() else last

        out_task = asyncio.ensure_future(results(proc.stdout))
        err_task = asyncio.ensure_future(bounded(proc.stderr, 4096))

        async def sink(chunk: bytes) -> None:
            if over_budget:
                raise over_budget[0]
            stdin.write(chunk)
            await stdin.drain()

        async def result() -> dict[str, Any]:
            out, err = await out_task, await err_task
            await proc.wait()
            if over_budget:
                raise over_budget[0]
            try:
                doc: dict[str, Any] = json.loads(out.decode().strip())
                return doc
            except (ValueError, UnicodeDecodeError):
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise UnpackError(f"layer worker failed: {tail[0][:200]}") from None

        try:
            try:
                nbytes = await _unless_done(
                    self.registry.stream_blob(ref, desc.digest, desc.size, sink, on_bytes=on_bytes), out_task
                )
            except (BrokenPipeError, ConnectionResetError, _ConsumerStopped):
                doc = await result()  # the worker stopped reading: its error is the real one
                if doc.get("ok"):
                    raise UnpackError("layer worker stopped reading early") from None
                raise _worker_error(doc) from None
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()
            doc = await result()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
            for t in (out_task, err_task):
                t.cancel()
            raise
        if not doc.get("ok"):
            raise _worker_error(doc)
        if budget is not None:
            budget.update(str(dest), int(doc["size"]))
        deferred = tuple((str(a), str(b)) for a, b in doc.get("deferred", []))
        return nbytes, (str(doc["diff_id"]), int(doc["size"]), deferred)

    async def _layer(
        self,
        res: _Resolved,
        i: int,
        chain: list[str],
        sem: asyncio.Semaphore,
        committed: list[asyncio.Event],
        emit: Callable[[ProgressEvent], None],
    ) -> tuple[int, bool]:
        key = chain[i]
        desc = res.manifest.layers[i]
        diff_id = res.config.diff_ids[i]
        store = self.store
        # checked under the layer's lock only: a GC holding it may have decided (before this
        # pull recorded the image) to remove the layer, and renames it away before unlocking
        async with store.lock(key):
            if store.has_layer(key) and self._may_reuse(key, desc):
                emit(ProgressEvent("layer-cached", i, desc.digest, 0, desc.size))
                committed[i].set()
                return 0, True
            staging = store.new_staging(key)
            try:
                try:
                    try:
                        async with sem:
                            nbytes, usize, deferred = await self._fetch_layer(
                                res.cand.reference, i, desc, diff_id, staging / "fs", emit
                            )
                    except _FATAL_REGISTRY_ERRORS:
                        raise
                    except RegistryError as exc:
                        # transient failure the Range resume could not bridge (e.g. a registry
                        # without Range support): start this layer once more from scratch
                        log.info("layer %d: %s; downloading it again", i, exc)
                        self._discard(staging)
                        staging = store.new_staging(key)
                        async with sem:
                            nbytes, usize, deferred = await self._fetch_layer(
                                res.cand.reference, i, desc, diff_id, staging / "fs", emit
                            )
                except DigestMismatch as exc:
                    raise DigestMismatch(
                        f"image {res.cand.reference}, layer {i + 1} of {len(res.manifest.layers)} "
                        f"({desc.digest}): the content is corrupt or was tampered with: {exc}"
                    ) from None
                except _MissingHardlinkTarget:
                    # a hardlink into a lower layer: redo this layer on top of its lowers
                    log.info("layer %d links into lower layers; unpacking it over an overlay of them", i)
                    self._discard(staging)
                    staging = store.new_staging(key)
                    for j in range(i):
                        await committed[j].wait()
                    async with sem:
                        nbytes, usize = await self._fetch_over_lowers(res, i, chain, staging, emit)
                    deferred = ()
                if deferred:
                    for j in range(i):
                        await committed[j].wait()
                    lowers = [store.layer_fs(chain[j]) for j in range(i - 1, -1, -1)]
                    await asyncio.to_thread(_copy_up_links, staging / "fs", deferred, lowers)
                lk = _LAYER_KEYS.get({}).get(_key_id(desc)) if is_encrypted(desc) else None
                rec = LayerRecord(
                    key,
                    diff_id,
                    desc.digest,
                    desc.media_type,
                    desc.size,
                    usize,
                    key_check=_key_check(lk) if lk is not None else None,
                )
                store.commit(staging, rec)
            except BaseException:
                self._discard(staging)
                raise
        committed[i].set()
        return nbytes, False

    def _discard(self, staging: Path) -> None:
        """Remove a layer attempt; what it wrote no longer counts against the budget."""
        self.store.discard(staging)
        budget = _BUDGET.get(None)
        if budget is not None:
            budget.forget(str(staging / "fs"))
            budget.forget(str(staging / "merged"))

    def _may_reuse(self, key: str, desc: Descriptor) -> bool:
        """Whether this pull may use the committed layer ``key`` without fetching it.

        A layer unpacked from an encrypted blob is reused only by a pull that
        unwrapped the same layer key (imgcrypt CVE-2022-24778: the diff_ids in an
        encrypted image's config are public, so any image naming them would get the
        plaintext from the store without a key). Any other pull fetches the layer
        and verifies its diff_id (proving it holds the content); the commit then
        finds the layer present and drops the staging copy.
        """
        rec = self.store.read_record(key)
        if rec is None:  # damaged: fetch the layer afresh (the caller holds the layer's lock)
            if self.store.in_live_bundle(key):  # never pull a lower from under a mounted rootfs
                raise StoreError(
                    f"layer {key} in the store has a damaged record and is in use; "
                    "release the bundles using it, then pull again"
                )
            log.warning("layer %s in the store has an unreadable record; fetching it again", key)
            self.store.evict(key)
            return False
        if not rec.media_type.endswith("+encrypted") and rec.key_check is None:
            return True
        lk = _LAYER_KEYS.get({}).get(_key_id(desc)) if is_encrypted(desc) else None
        if (
            lk is not None
            and rec.key_check is not None
            and hmac.compare_digest(_key_check(lk), rec.key_check)
        ):
            return True
        log.info("layer %s is cached from an encrypted image under another key; fetching it", desc.digest)
        return False

    async def _fetch_over_lowers(
        self, res: _Resolved, i: int, chain: list[str], staging: Path, emit: Callable[[ProgressEvent], None]
    ) -> tuple[int, int]:
        """Unpack layer ``i`` through an overlay of its committed lowers (upper = staging/fs).

        Deletions and hardlinks into lower files then behave as overlayfs makes
        them: whiteout devices and copied-up files land in the upper dir.
        """
        if not _bundle.overlay_supported():
            raise UnpackError(f"layer {i} hardlinks into a lower layer, which needs overlayfs here")
        lowers = [self.store.layer_fs(chain[j]) for j in range(i - 1, -1, -1)]
        merged = staging / "merged"
        merged.mkdir()
        await asyncio.to_thread(
            _bundle.mount_overlay, lowers, staging / "fs", staging / "work", merged, staging / "l"
        )
        try:
            desc = res.manifest.layers[i]
            nbytes, usize, _ = await self._fetch_layer(
                res.cand.reference, i, desc, res.config.diff_ids[i], merged, emit, flatten=True
            )
        finally:
            await asyncio.to_thread(_bundle.unmount, merged)
        for extra in ("merged", "work", "l"):
            shutil.rmtree(staging / extra, ignore_errors=True)
        return nbytes, usize

    # ------------------------------------------------------------------ bundle
    def _check_bundle_target(self, bundle_dir: Path) -> None:
        rootfs = bundle_dir / "rootfs"
        for p in (rootfs, bundle_dir / "config.json"):
            if os.path.islink(p):  # mount(8) and the copy would follow it out of the bundle
                raise BundleError(f"{p} is a symlink; refusing to populate it")
        if os.path.ismount(rootfs):
            raise BundleError(
                f"{rootfs} is already mounted; release the bundle first "
                f"(coco-image gc --release-bundle {rootfs.parent})"
            )
        if rootfs.exists() and (not rootfs.is_dir() or any(rootfs.iterdir())):
            raise BundleError(f"{rootfs} already exists and is not empty")
        if (bundle_dir / "config.json").exists():
            raise BundleError(f"{bundle_dir / 'config.json'} already exists")

    @staticmethod
    def _check_bundle_target_dir(rootfs: Path) -> None:
        """Right before mounting: ``rootfs`` is still a real, empty directory of the bundle."""
        st = os.lstat(rootfs)
        if not stat.S_ISDIR(st.st_mode) or any(os.scandir(rootfs)):
            raise BundleError(f"{rootfs} changed under the pull (not an empty directory)")

    def _make_bundle(self, res: _Resolved, chain: list[str], bundle_dir: Path, image_ref: str) -> Path:
        self._check_bundle_target(bundle_dir)
        bundle_dir.mkdir(parents=True, exist_ok=True)
        rootfs = bundle_dir / "rootfs"
        # what a pull killed in this step left (we hold the bundle's lock: nobody else is in it)
        _bundle.remove_stale_copies(rootfs)
        for stale in bundle_dir.glob(".config.json.*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        lowers = [self.store.layer_fs(c) for c in chain]
        mode = self.config.snapshotter
        if mode == "auto":
            mode = "overlay" if _bundle.overlay_supported() else "copy"
        mounted = copied = False
        bdir: Path | None = None
        try:
            if mode == "overlay":
                key = hashlib.sha256(str(bundle_dir.resolve()).encode()).hexdigest()[:32]
                bdir = self.store.bundles / f"{key}.{secrets.token_hex(4)}"
                bdir.mkdir()
                (bdir / "bundle.json").write_text(
                    json.dumps({"bundle": str(bundle_dir.resolve()), "layers": chain})
                )
                rootfs.mkdir(exist_ok=True)
                self._check_bundle_target_dir(rootfs)
                try:
                    _bundle.mount_overlay(
                        list(reversed(lowers)), bdir / "upper", bdir / "work", rootfs, bdir / "l"
                    )
                    mounted = True
                except BundleError:
                    if self.config.snapshotter == "overlay":
                        raise
                    log.warning("overlay mount failed; falling back to a flattened copy")
                    shutil.rmtree(bdir, ignore_errors=True)
                    bdir = None
                    mode = "copy"
            if mode == "copy":
                copy_rec = self.store.begin_copy(bundle_dir)
                try:
                    _bundle.copy_rootfs(lowers, rootfs)
                finally:
                    self.store.end_copy(copy_rec)
                copied = True
            spec = _bundle.build_runtime_config(
                res.config, rootfs=rootfs, image_ref=image_ref, manifest_digest=res.manifest_digest
            )
            tmp = bundle_dir / f".config.json.{secrets.token_hex(4)}"
            try:
                tmp.write_bytes(spec)
                os.replace(tmp, bundle_dir / "config.json")
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise BundleError(f"cannot write {bundle_dir / 'config.json'}: {exc.strerror}") from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except BaseException:
            if mounted:
                _bundle.unmount(rootfs)
            if bdir is not None:
                shutil.rmtree(bdir, ignore_errors=True)
            if copied and not os.path.islink(rootfs) and not os.path.ismount(rootfs):
                shutil.rmtree(rootfs, ignore_errors=True)  # the flattened copy this pull made
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(rootfs)  # only ever an empty directory: never someone else's files
            raise
        return rootfs

    # ------------------------------------------------------------------ the pull
    async def _pull(
        self, image_ref: str, bundle_dir: Path, emit: Callable[[ProgressEvent], None], t0: float
    ) -> PullResult:
        ref = parse_reference(image_ref)
        self._check_bundle_target(bundle_dir)
        res = await self._resolve_any(ref, short_name=is_short_name(image_ref))
        emit(ProgressEvent("resolved", message=f"{res.cand.reference.name}@{res.manifest_digest}"))
        await self._check_policy(
            PolicyContext(
                reference=res.cand.reference,
                original_reference=image_ref,
                manifest_digest=res.manifest_digest,
                index_digest=res.index_digest,
                manifest=res.manifest,
                manifest_bytes=res.manifest_bytes,
                registry=self.registry,
                resource_getter=self.config.resource_getter,
            )
        )
        keys_token = _LAYER_KEYS.set(await self._unwrap_layer_keys(res.manifest))
        try:
            return await self._pull_layers(res, image_ref, bundle_dir, emit, t0)
        finally:
            _LAYER_KEYS.reset(keys_token)

    async def _pull_layers(
        self,
        res: _Resolved,
        image_ref: str,
        bundle_dir: Path,
        emit: Callable[[ProgressEvent], None],
        t0: float,
    ) -> PullResult:
        chain = chain_ids(res.config.diff_ids)
        missing = [
            d.size for c, d in zip(chain, res.manifest.layers, strict=True) if not self.store.has_layer(c)
        ]
        budget = UnpackBudget.for_pull(self.store.root, self.config.max_unpacked_bytes)
        if missing:
            # unpacked layers are larger than their blobs: ask for room for a typical
            # expansion up front; the budget and the free-space watch bound the rest
            expected = sum(missing) * EXPECTED_EXPANSION
            self.store.check_space(expected)
            if sum(missing) > budget.limit:
                raise InsufficientSpace(
                    f"not enough space: the image's layers ({sum(missing)} bytes compressed) exceed "
                    f"the pull's unpacked-size budget of {budget.limit} bytes"
                )
        budget_token = _BUDGET.set(budget)
        # the image record is the layers' GC root from the start: a GC running meanwhile
        # (another process) must not remove layers this pull committed but not yet mounted
        self.store.record_image(
            res.manifest_digest,
            str(res.cand.reference),
            res.config_digest,
            chain,
            index_digest=res.index_digest,
        )
        sem = asyncio.Semaphore(self.config.max_concurrent_layers)
        committed = [asyncio.Event() for _ in chain]
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._layer(res, i, chain, sem, committed, emit))
                    for i in range(len(chain))
                ]
        except BaseExceptionGroup as eg:
            raise _unwrap_group(eg) from None
        finally:
            _BUDGET.reset(budget_token)
        results = [t.result() for t in tasks]
        downloaded = sum(n for n, _ in results)
        cached = sum(1 for _, c in results if c)
        emit(ProgressEvent("bundle", message=str(bundle_dir)))
        async with self.store.lock(bundle_key(bundle_dir)):  # one pull at a time into one bundle dir
            rootfs = await asyncio.to_thread(self._make_bundle, res, chain, bundle_dir, image_ref)
        total = sum(d.size for d in res.manifest.layers)
        el = time.monotonic() - t0
        emit(
            ProgressEvent(
                "done", None, res.manifest_digest, downloaded, total, downloaded / el if el else 0.0, el
            )
        )
        return PullResult(
            manifest_digest=res.manifest_digest,
            config_digest=res.config_digest,
            image_ref=image_ref,
            layers=len(chain),
            bytes_downloaded=downloaded,
            rootfs=rootfs,
            index_digest=res.index_digest,
            layers_cached=cached,
            seconds=el,
        )
