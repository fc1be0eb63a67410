"""The hub: one object holding the KBC, the unsealer, the secure mounter, the
key provider and the image handler, built from a :class:`CdhConfig`, and the
RPC service objects that expose it."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cdh.aa import AaClient
from cdh.config import CdhConfig
from cdh.errors import CdhConfigError, CdhError, ResourceError
from cdh.image import ImagePullService
from cdh.kbc import CcKbc, Kbc, OfflineFsKbc
from cdh.keyprovider import KbsKeyProvider
from cdh.sealed_secret import SEALED_SECRET_DIR, KmsProvider, LocalKekProvider, SecretUnsealer
from cdh.secure_mount import CommandRunner, SecureMounter
from coco_common.files import write_atomic
from coco_rpc import Code, RpcError, Service, bind
from coco_rpc.protos import api_pb2, keyprovider_pb2

__all__ = ["ERROR_PREFIX", "KMS_KEY_DIR", "Hub", "build_services"]

log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_PREFIX = "[CDH] [ERROR]: "
KMS_KEY_DIR = Path("/run/confidential-containers/cdh/kms-keys")


def _kbc_aa_socket(cfg: CdhConfig, env: Mapping[str, str]) -> str:
    """The AA socket the KBC gets its tokens from: ``AA_SOCKET`` when set (a
    pre-set one is kept by :func:`cdh.config.export_environment`), as
    upstream's cc_kbc plugin reads it; else ``[aa] aa_socket``."""
    return env.get("AA_SOCKET") or cfg.aa_socket


class Hub:
    def __init__(
        self,
        cfg: CdhConfig,
        *,
        resources: Kbc | None = None,
        aa: AaClient | None = None,
        runner: CommandRunner | None = None,
        sealed_secret_dir: Path = SEALED_SECRET_DIR,
        kms: Mapping[str, KmsProvider] | None = None,
        header_dir: Path | None = None,
        mapper_dir: Path | None = None,
        puller_factory: Callable[[Any], Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Raises :class:`cdh.errors.CdhConfigError` for a KBC name other than
        ``cc_kbc`` / ``offline_fs_kbc`` (upstream's start-up fails there too, with this text)."""
        self.cfg = cfg
        env = os.environ if env is None else env
        self.aa = aa if aa is not None else AaClient(cfg.aa_socket)
        self._kbc_aa: AaClient | None = None
        if resources is None:
            if cfg.kbc.name == "cc_kbc":
                token_socket = _kbc_aa_socket(cfg, env)
                client = self.aa
                if aa is None and token_socket != cfg.aa_socket:
                    client = self._kbc_aa = AaClient(token_socket)
                resources = CcKbc(cfg.kbc.url, lambda: client.get_token("kbs"), kbs_cert=cfg.kbc.kbs_cert)
            elif cfg.kbc.name == "offline_fs_kbc":
                resources = OfflineFsKbc()
            else:
                raise CdhConfigError(
                    f"kbs client creation failed: unknown kbc name {cfg.kbc.name[:64]}, only support "
                    "`cc_kbc`(feature `kbs`) and `offline_fs_kbc`."
                )
        self.resources = resources
        self.kms: dict[str, KmsProvider] = {"localfs": LocalKekProvider(KMS_KEY_DIR)}
        self.kms.update(kms or {})
        self.unsealer = SecretUnsealer(
            resources,
            key_dir=sealed_secret_dir,
            kms=self.kms,
            skip_verification=cfg.skip_sealed_secret_verification,
        )
        mount_kwargs: dict[str, Path] = {}
        if header_dir is not None:
            mount_kwargs["header_dir"] = header_dir
        if mapper_dir is not None:
            mount_kwargs["mapper_dir"] = mapper_dir
        self.mounter = SecureMounter(
            runner=runner,
            get_resource=resources.get_resource,
            unseal=lambda s: self.unsealer.unseal(s.encode()),
            **mount_kwargs,
        )
        self.key_unwrapper = KbsKeyProvider(resources, kms=self.kms)
        self.images = ImagePullService(
            cfg.image,
            resources=resources,
            aa=self.aa,
            key_provider=self.key_unwrapper,
            puller_factory=puller_factory,
        )

    async def get_resource(self, uri: str) -> bytes:
        return await self.resources.get_resource(uri)

    async def prefetch_credentials(self, *, root: Path = Path("/")) -> None:
        """Fetch every ``[[credentials]]`` resource to its path (fails on the first error).

        ``root`` relocates the absolute paths (tests)."""
        for cred in self.cfg.credentials:
            try:
                data = await self.resources.get_resource(cred.resource_uri)
            except CdhError as exc:
                raise ResourceError(f"credential {cred.resource_uri} -> {cred.path}: {exc}") from exc
            path = root / Path(cred.path).relative_to("/")
            try:
                _write_private(path, data)
            except OSError as exc:
                raise ResourceError(f"cannot write credential {cred.path}: {exc.strerror}") from exc
            log.info("credential %s written to %s", cred.resource_uri, path)

    async def close(self) -> None:
        await self.resources.close()
        if self._kbc_aa is not None:
            await self._kbc_aa.close()
        await self.aa.close()


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) all at once
    (:func:`coco_common.files.write_atomic`: a planted link is never written through)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o600)


def _fail(what: str, exc: BaseException) -> RpcError:
    if isinstance(exc, CdhError):  # messages of our errors never carry secret bytes
        log.warning("%s failed: %s", what, exc)
        return RpcError(Code.INTERNAL, f"{ERROR_PREFIX}{what} failed: {exc}")
    log.error("%s failed with an unexpected %s", what, type(exc).__name__)
    return RpcError(Code.INTERNAL, f"{ERROR_PREFIX}{what} failed: internal error ({type(exc).__name__})")


async def _guarded(what: str, op: Awaitable[T]) -> T:
    try:
        return await op
    except Exception as exc:
        raise _fail(what, exc) from exc


class _Service:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub


class _GetResource(_Service):
    async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
        data = await _guarded("Get Resource", self.hub.get_resource(req.ResourcePath))
        return api_pb2.GetResourceResponse(Resource=data)


class _SealedSecret(_Service):
    async def UnsealSecret(self, req: api_pb2.UnsealSecretInput) -> api_pb2.UnsealSecretOutput:
        plain = await _guarded("Unseal Secret", self.hub.unsealer.unseal(req.secret))
        return api_pb2.UnsealSecretOutput(plaintext=plain)


class _SecureMount(_Service):
    async def SecureMount(self, req: api_pb2.SecureMountRequest) -> api_pb2.SecureMountResponse:
        op = self.hub.mounter.secure_mount(req.volume_type, dict(req.options), req.mount_point)
        await _guarded("Secure Mount", op)
        return api_pb2.SecureMountResponse()


class _ImagePull(_Service):
    async def PullImage(self, req: api_pb2.ImagePullRequest) -> api_pb2.ImagePullResponse:
        digest = await _guarded("Pull Image", self.hub.images.pull(req.image_url, req.bundle_path))
        return api_pb2.ImagePullResponse(manifest_digest=digest)


class _KeyProvider(_Service):
    async def UnWrapKey(
        self, req: keyprovider_pb2.KeyProviderKeyWrapProtocolInput
    ) -> keyprovider_pb2.KeyProviderKeyWrapProtocolOutput:
        op = self.hub.key_unwrapper.handle_request(req.KeyProviderKeyWrapProtocolInput)
        out = await _guarded("UnWrapKey", op)
        return keyprovider_pb2.KeyProviderKeyWrapProtocolOutput(KeyProviderKeyWrapProtocolOutput=out)

    # WrapKey is declared in the proto but not served, as upstream's CDH:
    # callers get NOT_FOUND "/keyprovider.KeyProviderService/WrapKey is not supported".


def build_services(hub: Hub) -> list[Service]:
    """The five services upstream registers on the CDH socket."""
    impls = (
        (api_pb2.DESCRIPTOR, "GetResourceService", _GetResource(hub)),
        (api_pb2.DESCRIPTOR, "SealedSecretService", _SealedSecret(hub)),
        (api_pb2.DESCRIPTOR, "SecureMountService", _SecureMount(hub)),
        (api_pb2.DESCRIPTOR, "ImagePullService", _ImagePull(hub)),
        (keyprovider_pb2.DESCRIPTOR, "KeyProviderService", _KeyProvider(hub)),
    )
    return [bind(d.services_by_name[name], impl, error_prefix=ERROR_PREFIX) for d, name, impl in impls]
