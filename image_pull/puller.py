"""The pull engine: reference -> verified manifest/config -> policy -> keys -> layers -> bundle.

:meth:`ImagePuller.pull` reads as those steps; each step's machinery lives in
its own module:

* registry access and the HTTP client: :mod:`image_pull.registry`;
* the signature policy: any :class:`~image_pull.hooks.PolicyCheck` given in
  :class:`PullerConfig` (:class:`image_pull.trust.TrustPolicy`);
* layer keys: the :class:`~image_pull.ocicrypt.layer.LayerDecrypter` given in
  :class:`PullerConfig`;
* one layer's decompress + diff_id + unpack, in a worker process or a thread:
  :mod:`image_pull.layer_worker`; hardlink copy-up into lower layers:
  :mod:`image_pull.unpack.overlay`;
* the rootfs and config.json: :mod:`image_pull.bundle`.

One streaming pass per layer, never writing the compressed blob to disk and
never holding a layer in memory::

    registry GET (event loop: sha256 of the compressed bytes, size check, Range resume)
      -> worker process or ChunkPipe -> [decrypt] -> decompress -> diff_id hash -> unpack
      -> staging dir -> (compressed digest + diff_id verified) -> atomic rename into the store

Layers run in parallel (``max_concurrent_layers``), each under a cross-process
lock on its store key so concurrent pulls never download a layer twice. The
rootfs appears only after every layer committed and the policy accepted the
image; a failed pull leaves no populated rootfs. Everything one pull needs
(its keys, disk budget, layer events) travels in one :class:`_PullPlan`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from image_pull import bundle as _bundle
from image_pull.auth import AuthFile
from image_pull.budget import UnpackBudget
from image_pull.errors import (
    AuthError,
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
)
from image_pull.hooks import LayerDecryptor, PolicyCheck, PolicyContext
from image_pull.layer_worker import LayerJob, LayerResult, via_process, via_thread
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
from image_pull.progress import ProgressEvent
from image_pull.reference import Reference, is_short_name, parse_reference
from image_pull.registries_conf import Candidate, ProxyConfig, RegistryConfig
from image_pull.registry import FetchedManifest, RegistryClient, RetryPolicy, http_client
from image_pull.store import LayerRecord, LayerStore, bundle_key, chain_ids
from image_pull.stream import PipeAborted, Readable
from image_pull.unpack.overlay import copy_up_links

if TYPE_CHECKING:
    from image_pull.ocicrypt.layer import LayerDecrypter, LayerKey

__all__ = ["DEFAULT_PULL_TIMEOUT", "ImagePuller", "PullResult", "PullerConfig"]

log = logging.getLogger("image_pull.puller")

DEFAULT_MAX_LAYER_BYTES = 64 << 30
#: seconds a pull may take when nobody says otherwise (CLI, CDH): a registry that
#: trickles must not hold a pull, and CDH's pull lock, forever
DEFAULT_PULL_TIMEOUT = 1800.0
#: free space asked for up front per compressed byte still to fetch (a typical gzip ratio)
EXPECTED_EXPANSION = 2

_FATAL_REGISTRY_ERRORS = (AuthError, NotFound, RateLimited, TooLarge)
_KeyId = tuple[str, str]
Emit = Callable[[ProgressEvent], None]


def _key_check(key: LayerKey) -> str:
    """Proof of holding a layer key, storable in the clear (a MAC under the key)."""
    return hmac.new(key.symkey, b"image_pull layer store key check v1", hashlib.sha256).hexdigest()


def _key_id(desc: Descriptor) -> _KeyId:
    return desc.digest, repr(sorted(desc.annotations.items()))


@dataclass(frozen=True)
class PullerConfig:
    work_dir: Path  # layer store + metadata live here
    auth_json: bytes | None = field(default=None, repr=False)  # containers auth.json contents
    extra_root_certs: tuple[bytes, ...] = ()  # PEM
    insecure_registries: frozenset[str] = frozenset()  # host[:port] allowed over plain HTTP
    registry_config: RegistryConfig | None = None  # registries.conf subset (its insecure entries count too)
    proxy: ProxyConfig | None = None
    max_concurrent_layers: int = 3
    #: the signature policy, already parsed (e.g. image_pull.trust.TrustPolicy); None: no check
    signature_policy: PolicyCheck | None = None
    #: unwraps encrypted layers' keys (private keys and/or CDH's key provider); None: no keys
    decrypter: LayerDecrypter | None = field(default=None, repr=False)
    platform: str | None = None  # "os/arch[/variant]"; default: this machine
    snapshotter: str = "auto"  # "overlay", "copy" (flattened), or "auto" (overlay, else copy)
    pull_timeout: float | None = DEFAULT_PULL_TIMEOUT  # seconds for the whole pull (None: no deadline)
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES  # uncompressed size limit per layer
    # uncompressed bytes one pull may write, all layers together (None: the work dir's
    # free space less image_pull.budget.RESERVE when the pull starts)
    max_unpacked_bytes: int | None = None
    unpack_workers: str = "process"  # "process": one worker process per layer (uses more CPUs); "thread"
    retry: RetryPolicy = field(default_factory=RetryPolicy)


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


@dataclass
class _PullPlan:
    """Everything one pull's layer tasks share, passed explicitly."""

    res: _Resolved
    chain: list[str]
    keys: dict[_KeyId, LayerKey]  # unwrapped up front, for every encrypted layer
    budget: UnpackBudget
    emit: Emit
    sem: asyncio.Semaphore
    committed: list[asyncio.Event]

    def key_for(self, desc: Descriptor) -> LayerKey | None:
        return self.keys.get(_key_id(desc)) if desc.encrypted else None


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
        self._http = http if http is not None else http_client(config.extra_root_certs, config.proxy)
        auth = AuthFile.from_bytes(config.auth_json) if config.auth_json is not None else None
        insecure = set(config.insecure_registries)
        if config.registry_config is not None:
            insecure |= config.registry_config.insecure_hosts()
        self.registry = RegistryClient(
            self._http, auth=auth, insecure_registries=frozenset(insecure), retry=config.retry
        )
        self.store = LayerStore(config.work_dir)
        self.platform = Platform.parse(config.platform) if config.platform else Platform.host()
        self._decrypter = config.decrypter  # the default one is made for the first encrypted layer

    def _layer_decrypter(self) -> LayerDecrypter:
        if self._decrypter is None:
            from image_pull.ocicrypt.layer import LayerDecrypter  # cryptography: only when needed

            self._decrypter = LayerDecrypter()
        return self._decrypter

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ImagePuller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public
    async def pull(self, image_ref: str, bundle_dir: Path, *, progress: Emit | None = None) -> PullResult:
        emit = progress or (lambda _e: None)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.config.pull_timeout):
                return await self._pull(image_ref, Path(bundle_dir), emit, t0)
        except TimeoutError as exc:
            raise PullTimeout(
                f"pull of {image_ref[:120]} did not finish within {self.config.pull_timeout} s"
            ) from exc
        except OSError as exc:  # a file operation no step translated: still one typed error
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(
                    f"no space (or no free inodes) left for the pull of {image_ref[:120]}"
                ) from exc
            raise StoreError(f"pull of {image_ref[:120]}: {exc.strerror or type(exc).__name__}") from exc

    async def release_bundle(self, bundle_dir: Path) -> None:
        """Unmount/remove ``<bundle>/rootfs`` and its ``config.json``; drop its GC root in the store."""
        bundle_dir = Path(bundle_dir)
        async with self.store.lock(bundle_key(bundle_dir)):
            states = self.store.bundle_states(bundle_dir)
            await asyncio.to_thread(_bundle.release_bundle, bundle_dir, states)

    async def _pull(self, image_ref: str, bundle_dir: Path, emit: Emit, t0: float) -> PullResult:
        ref = parse_reference(image_ref)
        _bundle.check_target(bundle_dir)
        res = await self._resolve_any(ref, short_name=is_short_name(image_ref))
        emit(ProgressEvent("resolved", message=f"{res.cand.reference.name}@{res.manifest_digest}"))
        await self._check_policy(res, image_ref)
        keys = await self._unwrap_layer_keys(res.manifest)
        plan = self._plan(res, keys, emit)
        results = await self._pull_layers(plan)
        emit(ProgressEvent("bundle", message=str(bundle_dir)))
        async with self.store.lock(bundle_key(bundle_dir)):  # one pull at a time into one bundle dir
            rootfs = await asyncio.to_thread(self._make_bundle, res, plan.chain, bundle_dir, image_ref)
        downloaded = sum(n for n, _ in results)
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
            layers=len(plan.chain),
            bytes_downloaded=downloaded,
            rootfs=rootfs,
            index_digest=res.index_digest,
            layers_cached=sum(1 for _, cached in results if cached),
            seconds=el,
        )

    # ------------------------------------------------------------------ resolve
    async def _resolve(self, cand: Candidate) -> _Resolved:
        ref = cand.reference
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
            cfg_bytes = await self.registry.get_blob(ref, manifest.config.digest, manifest.config.size)
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

    # ------------------------------------------------------------------ policy and keys
    async def _check_policy(self, res: _Resolved, image_ref: str) -> None:
        """Runs for cached images too, before anything becomes visible in the bundle."""
        if self.config.signature_policy is None:
            return
        await self.config.signature_policy.check(
            PolicyContext(
                reference=res.cand.reference,
                original_reference=image_ref,
                manifest_digest=res.manifest_digest,
                index_digest=res.index_digest,
                manifest=res.manifest,
                manifest_bytes=res.manifest_bytes,
                registry=self.registry,
            )
        )

    async def _unwrap_layer_keys(self, manifest: Manifest) -> dict[_KeyId, LayerKey]:
        """Unwrap every encrypted layer's key up front: a missing key fails the pull before
        any download, and for cached layers too."""
        keys: dict[_KeyId, LayerKey] = {}
        for desc in manifest.layers:
            if desc.encrypted:
                keys[_key_id(desc)] = await self._layer_decrypter().unwrap(desc)
        return keys

    # ------------------------------------------------------------------ layers
    def _plan(self, res: _Resolved, keys: dict[_KeyId, LayerKey], emit: Emit) -> _PullPlan:
        """The pull's shared state; checks up front that the missing layers can fit."""
        chain = chain_ids(res.config.diff_ids)
        missing = [
            d.size for c, d in zip(chain, res.manifest.layers, strict=True) if not self.store.has_layer(c)
        ]
        budget = UnpackBudget.for_pull(self.store.root, self.config.max_unpacked_bytes)
        if missing:
            # unpacked layers are larger than their blobs: ask for room for a typical
            # expansion up front; the budget and the free-space watch bound the rest
            self.store.check_space(sum(missing) * EXPECTED_EXPANSION)
            if sum(missing) > budget.limit:
                raise InsufficientSpace(
                    f"not enough space: the image's layers ({sum(missing)} bytes compressed) exceed "
                    f"the pull's unpacked-size budget of {budget.limit} bytes"
                )
        sem = asyncio.Semaphore(self.config.max_concurrent_layers)
        return _PullPlan(res, chain, keys, budget, emit, sem, [asyncio.Event() for _ in chain])

    async def _pull_layers(self, plan: _PullPlan) -> list[tuple[int, bool]]:
        """Every layer in the store; per layer (bytes downloaded, whether it was cached)."""
        res = plan.res
        # the image record is the layers' GC root from the start: a GC running meanwhile
        # (another process) must not remove layers this pull committed but not yet mounted
        self.store.record_image(
            res.manifest_digest,
            str(res.cand.reference),
            res.config_digest,
            plan.chain,
            index_digest=res.index_digest,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._layer(plan, i)) for i in range(len(plan.chain))]
        except BaseExceptionGroup as eg:
            raise _unwrap_group(eg) from None  # the first real error, as its layer raised it
        return [t.result() for t in tasks]

    def _decryptor_for(self, plan: _PullPlan, desc: Descriptor) -> LayerDecryptor | None:
        key = plan.key_for(desc)
        if key is None:
            return None

        def decryptor(ciphertext: Readable) -> Readable:
            from image_pull.ocicrypt.layer import DecryptingReader

            return DecryptingReader(ciphertext, key)

        return decryptor

    async def _fetch_layer(self, plan: _PullPlan, i: int, dest: Path) -> tuple[int, LayerResult]:
        """Download layer ``i`` and unpack it into ``dest``; checks its diff_id."""
        desc = plan.res.manifest.layers[i]
        diff_id = plan.res.config.diff_ids[i]
        emit = plan.emit
        decryptor = self._decryptor_for(plan, desc)
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

        ref = plan.res.cand.reference

        def download(sink: Callable[[bytes], Awaitable[None]]) -> Awaitable[int]:
            return self.registry.stream_blob(ref, desc.digest, desc.size, sink, on_bytes=on_bytes)

        job = LayerJob(
            media_type=desc.media_type,
            diff_algo=diff_id.split(":", 1)[0],
            dest=str(dest),
            compressed_size=desc.size,
            max_layer_bytes=self.config.max_layer_bytes,
        )
        emit(ProgressEvent("layer-start", i, desc.digest, 0, desc.size))
        if decryptor is None and self.config.unpack_workers == "process" and sys.executable:
            nbytes, result = await via_process(download, job, plan.budget)
        else:
            nbytes, result = await via_thread(download, job, decryptor, plan.budget)
        if result.diff_id != diff_id:
            raise DigestMismatch(
                f"layer {desc.digest}: uncompressed content hashes to {result.diff_id}, config says {diff_id}"
            )
        el = time.monotonic() - t0
        emit(ProgressEvent("layer-done", i, desc.digest, nbytes, desc.size, nbytes / el if el else 0.0, el))
        return nbytes, result

    async def _fetch_with_retry(
        self, plan: _PullPlan, i: int, staging: list[Path]
    ) -> tuple[int, LayerResult]:
        """:meth:`_fetch_layer` into ``staging[0]``, once more from scratch (new staging) after
        a transient registry failure the Range resume could not bridge."""
        try:
            async with plan.sem:
                return await self._fetch_layer(plan, i, staging[0] / "fs")
        except _FATAL_REGISTRY_ERRORS:
            raise
        except RegistryError as exc:  # e.g. a registry without Range support
            log.info("layer %d: %s; downloading it again", i, exc)
            self._discard(plan, staging[0])
            staging[0] = self.store.new_staging(plan.chain[i])
            async with plan.sem:
                return await self._fetch_layer(plan, i, staging[0] / "fs")

    async def _layer(self, plan: _PullPlan, i: int) -> tuple[int, bool]:
        key = plan.chain[i]
        desc = plan.res.manifest.layers[i]
        store = self.store
        # checked under the layer's lock only: a GC holding it may have decided (before this
        # pull recorded the image) to remove the layer, and renames it away before unlocking
        async with store.lock(key):
            if store.has_layer(key) and self._may_reuse(plan, key, desc):
                plan.emit(ProgressEvent("layer-cached", i, desc.digest, 0, desc.size))
                plan.committed[i].set()
                return 0, True
            staging = [store.new_staging(key)]  # the retry replaces it
            try:
                try:
                    nbytes, result = await self._fetch_with_retry(plan, i, staging)
                except DigestMismatch as exc:
                    raise DigestMismatch(
                        f"image {plan.res.cand.reference}, layer {i + 1} of {len(plan.chain)} "
                        f"({desc.digest}): the content is corrupt or was tampered with: {exc}"
                    ) from exc
                if result.deferred:  # hardlinks into lower layers: copy their targets up
                    for j in range(i):
                        await plan.committed[j].wait()
                    lowers = [store.layer_fs(plan.chain[j]) for j in range(i - 1, -1, -1)]
                    await asyncio.to_thread(copy_up_links, staging[0] / "fs", result.deferred, lowers)
                lk = plan.key_for(desc)
                rec = LayerRecord(
                    key,
                    plan.res.config.diff_ids[i],
                    desc.digest,
                    desc.media_type,
                    desc.size,
                    result.size,
                    key_check=_key_check(lk) if lk is not None else None,
                )
                store.commit(staging[0], rec)
            except BaseException:
                self._discard(plan, staging[0])
                raise
        plan.committed[i].set()
        return nbytes, False

    def _discard(self, plan: _PullPlan, staging: Path) -> None:
        """Remove a layer attempt; what it wrote no longer counts against the budget."""
        self.store.discard(staging)
        plan.budget.forget(str(staging / "fs"))

    def _may_reuse(self, plan: _PullPlan, key: str, desc: Descriptor) -> bool:
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
        lk = plan.key_for(desc)
        if (
            lk is not None
            and rec.key_check is not None
            and hmac.compare_digest(_key_check(lk), rec.key_check)
        ):
            return True
        log.info("layer %s is cached from an encrypted image under another key; fetching it", desc.digest)
        return False

    # ------------------------------------------------------------------ bundle
    def _make_bundle(self, res: _Resolved, chain: list[str], bundle_dir: Path, image_ref: str) -> Path:
        spec = _bundle.BundleSpec(
            bundle_dir=bundle_dir,
            lowers_bottom_first=tuple(self.store.layer_fs(c) for c in chain),
            image=res.config,
            image_ref=image_ref,
            manifest_digest=res.manifest_digest,
            snapshotter=self.config.snapshotter,
        )
        return _bundle.make_bundle(
            spec,
            new_overlay_state=lambda: self.store.new_bundle_state(bundle_dir, chain),
            copying=lambda: self.store.copying(bundle_dir),
        )
