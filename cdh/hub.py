"""The hub: one object holding the KBC, the unsealer, the secure mounter, the
key provider and the image handler, built from a :class:`CdhConfig`, and the
RPC service objects that expose it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdh.aa import AaClient
from cdh.config import CdhConfig
from cdh.errors import CdhError, ResourceError
from cdh.image import ImagePullHandler
from cdh.kbc import CcKbc, OfflineFsKbc, ResourceGetter
from cdh.keyprovider import KeyUnwrapper
from cdh.sealed_secret import SEALED_SECRET_DIR, KmsProvider, LocalKekProvider, SecretUnsealer
from cdh.secure_mount import CommandRunner, SecureMounter
from coco_rpc import Code, RpcError, Service, bind
from coco_rpc.protos import api_pb2, keyprovider_pb2

__all__ = ["ERROR_PREFIX", "KMS_KEY_DIR", "Hub", "build_services"]

log = logging.getLogger(__name__)

ERROR_PREFIX = "[CDH] [ERROR]: "
KMS_KEY_DIR = Path("/run/confidential-containers/cdh/kms-keys")


class Hub:
    def __init__(
        self,
        cfg: CdhConfig,
        *,
        resources: ResourceGetter | None = None,
        aa: AaClient | None = None,
        runner: CommandRunner | None = None,
        sealed_secret_dir: Path = SEALED_SECRET_DIR,
        kms: Mapping[str, KmsProvider] | None = None,
        header_dir: Path | None = None,
        mapper_dir: Path | None = None,
        puller_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.aa = aa if aa is not None else AaClient(cfg.aa_socket)
        if resources is None:
            if cfg.kbc.name == "cc_kbc":
                client = self.aa
                resources = CcKbc(cfg.kbc.url, lambda: client.get_token("kbs"), kbs_cert=cfg.kbc.kbs_cert)
            else:
                resources = OfflineFsKbc()
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
        self.key_unwrapper = KeyUnwrapper(resources, kms=self.kms)
        self.images = ImagePullHandler(
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
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(path)
            log.info("credential %s written to %s", cred.resource_uri, path)

    async def close(self) -> None:
        close = getattr(self.resources, "close", None)
        if close is not None:
            await close()
        await self.aa.close()


def _fail(what: str, exc: BaseException) -> RpcError:
    if isinstance(exc, CdhError):  # messages of our errors never carry secret bytes
        log.warning("%s failed: %s", what, exc)
        return RpcError(Code.INTERNAL, f"{ERROR_PREFIX}{what} failed: {exc}")
    log.error("%s failed with an unexpected %s", what, type(exc).__name__)
    return RpcError(Code.INTERNAL, f"{ERROR_PREFIX}{what} failed: internal error ({type(exc).__name__})")


class _GetResource:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
        try:
            data = await self.hub.get_resource(req.ResourcePath)
        except Exception as exc:
            raise _fail("Get Resource", exc) from exc
        return api_pb2.GetResourceResponse(Resource=data)


class _SealedSecret:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def UnsealSecret(self, req: api_pb2.UnsealSecretInput) -> api_pb2.UnsealSecretOutput:
        try:
            plain = await self.hub.unsealer.unseal(req.secret)
        except Exception as exc:
            raise _fail("Unseal Secret", exc) from exc
        return api_pb2.UnsealSecretOutput(plaintext=plain)


class _SecureMount:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def SecureMount(self, req: api_pb2.SecureMountRequest) -> api_pb2.SecureMountResponse:
        try:
            await self.hub.mounter.secure_mount(req.volume_type, dict(req.options), req.mount_point)
        except Exception as exc:
            raise _fail("Secure Mount", exc) from exc
        return api_pb2.SecureMountResponse()


class _ImagePull:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def PullImage(self, req: api_pb2.ImagePullRequest) -> api_pb2.ImagePullResponse:
        try:
            digest = await self.hub.images.pull(req.image_url, req.bundle_path)
        except Exception as exc:
            raise _fail("Pull Image", exc) from exc
        return api_pb2.ImagePullResponse(manifest_digest=digest)


class _KeyProvider:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def UnWrapKey(
        self, req: keyprovider_pb2.KeyProviderKeyWrapProtocolInput
    ) -> keyprovider_pb2.KeyProviderKeyWrapProtocolOutput:
        try:
            out = await self.hub.key_unwrapper.handle_request(req.KeyProviderKeyWrapProtocolInput)
        except Exception as exc:
            raise _fail("UnWrapKey", exc) from exc
        return keyprovider_pb2.KeyProviderKeyWrapProtocolOutput(KeyProviderKeyWrapProtocolOutput=out)

    async def WrapKey(
        self, req: keyprovider_pb2.KeyProviderKeyWrapProtocolInput
    ) -> keyprovider_pb2.KeyProviderKeyWrapProtocolOutput:
        raise RpcError(Code.UNIMPLEMENTED, f"{ERROR_PREFIX}WrapKey is not supported by the CDH (unwrap only)")


def build_services(hub: Hub) -> list[Service]:
    """The five services upstream registers on the CDH socket."""
    return [
        bind(
            api_pb2.DESCRIPTOR.services_by_name["GetResourceService"],
            _GetResource(hub),
            error_prefix=ERROR_PREFIX,
        ),
        bind(
            api_pb2.DESCRIPTOR.services_by_name["SealedSecretService"],
            _SealedSecret(hub),
            error_prefix=ERROR_PREFIX,
        ),
        bind(
            api_pb2.DESCRIPTOR.services_by_name["SecureMountService"],
            _SecureMount(hub),
            error_prefix=ERROR_PREFIX,
        ),
        bind(
            api_pb2.DESCRIPTOR.services_by_name["ImagePullService"],
            _ImagePull(hub),
            error_prefix=ERROR_PREFIX,
        ),
        bind(
            keyprovider_pb2.DESCRIPTOR.services_by_name["KeyProviderService"],
            _KeyProvider(hub),
            error_prefix=ERROR_PREFIX,
        ),
    ]
