"""PullImage: image_pull's :class:`~image_pull.puller.ImagePuller` configured
from ``[image]``, then the pull is recorded in the AA event log.

One puller is built lazily on the first pull (a failed build is retried on
the next call) and pulls are serialised, as upstream. After a successful
pull, ``ExtendRuntimeMeasurement(Domain="github.com/confidential-containers",
Operation="PullImage", Content='{"image":"<url>", "digest":"<digest>"}')``
(note the space after the comma: upstream's exact bytes). ``NOT_SUPPORTED``
and ``NOT_ENABLED`` only warn; an RPC error fails the pull.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cdh.aa import AaClient, ExtendResult
from cdh.config import CdhImageConfig, describe_unknown, parse_registry_config
from cdh.errors import CdhConfigError, CdhError, ImagePullFailed
from cdh.files import read_limited
from cdh.kbc import ResourceGetter
from coco_common.fields import Fields
from coco_rpc import RpcError, parse_address
from image_pull.errors import ImagePullError
from image_pull.registries_conf import RegistryConfig

if TYPE_CHECKING:  # image_pull's engine is imported when the first pull needs it
    from image_pull.hooks import KeyUnwrapper, PolicyCheck
    from image_pull.puller import PullerConfig

__all__ = ["MEASUREMENT_DOMAIN", "ImagePullService", "Puller", "PullerFactory", "measurement_content"]

log = logging.getLogger(__name__)

MEASUREMENT_DOMAIN = "github.com/confidential-containers"
MAX_FILE_BYTES = 4 << 20


def measurement_content(image_url: str, digest: str) -> str:
    """Upstream's exact event content (``format!`` of the raw strings)."""
    return '{"image":"' + image_url + '", "digest":"' + digest + '"}'


class Pulled(Protocol):
    @property
    def manifest_digest(self) -> str: ...


class Puller(Protocol):
    """What PullImage needs of a puller (:class:`image_pull.puller.ImagePuller`)."""

    async def pull(self, image_ref: str, bundle_dir: Path) -> Pulled: ...


PullerFactory = Callable[["PullerConfig"], Puller]


class ImagePullService:
    def __init__(
        self,
        cfg: CdhImageConfig,
        *,
        resources: ResourceGetter | None,
        aa: AaClient | None,
        key_provider: KeyUnwrapper | None = None,
        puller_factory: PullerFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.resources = resources
        self.aa = aa
        self.key_provider = key_provider
        self._factory = puller_factory
        self._puller: Puller | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self, uri: str) -> bytes:
        if uri.startswith("file://"):
            try:
                return read_limited(Path(uri[len("file://") :]), MAX_FILE_BYTES)
            except OSError as exc:
                raise CdhConfigError(f"cannot read {uri}: {exc.strerror}") from exc
        if self.resources is None:
            raise CdhConfigError(f"cannot fetch {uri}: no KBC configured")
        return await self.resources.get_resource(uri)

    async def _registry_config(self) -> RegistryConfig | None:
        if self.cfg.registry_config is not None:
            return self.cfg.registry_config
        if self.cfg.registry_configuration_uri:
            raw = await self._fetch(self.cfg.registry_configuration_uri)
            try:
                table = tomllib.loads(raw.decode())
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise CdhConfigError("registry configuration is not valid TOML") from exc
            fields = Fields(table, error=CdhConfigError, where="registry_configuration")
            rc = parse_registry_config(fields)
            if fields.notes:
                log.warning(
                    "ignoring unknown registry configuration keys: %s", describe_unknown(fields.notes)
                )
            return rc
        return None

    async def _uri_or_inline(self, uri: str | None, inline: str | None) -> bytes | None:
        if uri:
            return await self._fetch(uri)
        return inline.encode() if inline else None

    async def _policy(self) -> PolicyCheck | None:
        """The signature policy, parsed now: a bad one fails the set-up, with its reason."""
        c = self.cfg
        policy = await self._uri_or_inline(c.image_security_policy_uri, c.image_security_policy)
        if policy is None:
            return None
        sigstore = await self._uri_or_inline(c.sigstore_config_uri, c.sigstore_config)
        from image_pull.trust import TrustPolicy

        return TrustPolicy(
            policy,
            sigstore_config=sigstore,
            resource_getter=self.resources.get_resource if self.resources is not None else None,
        )

    async def build_config(self) -> PullerConfig:
        """The :class:`image_pull.puller.PullerConfig` for ``[image]``."""
        from image_pull.ocicrypt import LayerDecrypter
        from image_pull.puller import PullerConfig

        c = self.cfg
        auth = None
        if c.authenticated_registry_credentials_uri:
            auth = await self._fetch(c.authenticated_registry_credentials_uri)
        return PullerConfig(
            work_dir=c.work_dir,
            auth_json=auth,
            extra_root_certs=tuple(x.encode() for x in c.extra_root_certificates),
            registry_config=await self._registry_config(),  # its insecure entries are plain HTTP
            proxy=c.image_pull_proxy,
            max_concurrent_layers=c.max_concurrent_layer_downloads_per_image,
            signature_policy=await self._policy(),
            decrypter=LayerDecrypter(key_provider=self.key_provider) if self.key_provider else None,
            pull_timeout=c.pull_timeout,
        )

    async def _get_puller(self) -> Puller:
        if self._puller is None:
            config = await self.build_config()
            if self._factory is not None:
                self._puller = self._factory(config)
            else:
                from image_pull.puller import ImagePuller

                self._puller = ImagePuller(config)
        return self._puller

    async def pull(self, image_url: str, bundle_path: str) -> str:
        if not image_url:
            raise ImagePullFailed("image_url is empty")
        if not bundle_path.startswith("/"):
            raise ImagePullFailed("bundle_path must be an absolute path")
        async with self._lock:
            try:
                puller = await self._get_puller()
            except CdhError as exc:
                raise ImagePullFailed(f"cannot set up the image client: {exc}") from exc
            except Exception as exc:  # image_pull refused the config, or a factory failed
                raise ImagePullFailed(f"cannot set up the image client: {_describe(exc)}") from exc
            try:
                result = await puller.pull(image_url, Path(bundle_path))
            except CdhError:
                raise
            except Exception as exc:
                raise ImagePullFailed(f"pull of {image_url!r} failed: {_describe(exc)}") from exc
            digest: str = result.manifest_digest
        await self._measure(image_url, digest)
        log.info("pulled %s (%s) into %s", image_url, digest, bundle_path)
        return digest

    def _aa_present(self) -> bool:
        if self.aa is None:
            return False
        try:
            addr = parse_address(self.aa.address)
        except ValueError:
            return False
        return addr.kind != "unix" or Path(addr.target).exists()

    async def _measure(self, image_url: str, digest: str) -> None:
        if self.aa is None or not self._aa_present():
            log.warning("attestation agent socket absent: pull of %s not measured", image_url)
            return
        try:
            res = await self.aa.extend_runtime_measurement(
                MEASUREMENT_DOMAIN, "PullImage", measurement_content(image_url, digest)
            )
        except RpcError as exc:
            raise ImagePullFailed(f"cannot record the pull in the AA event log: {exc.message}") from exc
        if res is not ExtendResult.OK:
            log.warning("runtime measurement of the pull not recorded: %s", res.name)


def _describe(exc: Exception) -> str:
    """What of a pull failure may be shown: image_pull's own errors are written
    to be (no credentials in them); any other exception only by its type, as
    its text could carry anything (proxy URLs with passwords, auth.json bytes)."""
    return str(exc) if isinstance(exc, ImagePullError) else f"internal error ({type(exc).__name__})"
