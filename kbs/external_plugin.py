"""trustee's ``external`` plugin: KBS requests under ``/kbs/v0/external/<backend>/...`` are
handed to a separate plugin server over gRPC (``protos/plugin.proto``, ``kbs.plugin.v1.KbsPlugin``:
``Handle``, ``ValidateAuth``, ``NeedsEncryption``).

Config as trustee's: ``[[plugins]] name = "external"``, ``backends = [{ name, endpoint,
timeout_ms?, ca_cert_path? }]``; an ``https://`` endpoint needs ``ca_cert_path`` (the plugin
server's CA), ``http://`` is plaintext (loud warning). Backend names are unique."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from coco_common.files import read_bounded

from .ear import MAX_PEM_BYTES
from .errors import KbsConfigError, PluginInternalError
from .grpc_api import MAX_GRPC_MESSAGE, grpc_target
from .protos import plugin_pb2 as pb

__all__ = ["ClientPlugin", "ExternalBackend", "ExternalPlugin", "PluginCall"]

log = logging.getLogger(__name__)

SERVICE = "kbs.plugin.v1.KbsPlugin"
#: a plugin answer larger than this is refused
MAX_PLUGIN_RESPONSE = MAX_GRPC_MESSAGE


@dataclass(frozen=True)
class PluginCall:
    body: bytes
    query: Mapping[str, str]
    path: Sequence[str]
    method: str


class ClientPlugin(Protocol):
    """trustee's ``ClientPlugin``: whether a call is an admin one, the answer, whether the answer
    is sealed to the caller's TEE key."""

    async def validate_auth(self, c: PluginCall) -> bool: ...

    async def handle(self, c: PluginCall) -> bytes: ...

    async def encrypted(self, c: PluginCall) -> bool: ...

    async def close(self) -> None: ...


class ExternalBackend:
    def __init__(self, name: str, endpoint: str, *, timeout_ms: int | None, ca_cert_path: str | None) -> None:
        self.name = name
        target, tls = grpc_target(endpoint)
        opts = [("grpc.max_receive_message_length", MAX_PLUGIN_RESPONSE)]
        if tls:
            if not ca_cert_path:
                raise KbsConfigError(
                    f"plugins.external.backends {name}: an https:// endpoint needs ca_cert_path"
                )
            try:
                ca = read_bounded(ca_cert_path, MAX_PEM_BYTES)
            except (OSError, ValueError) as exc:
                raise KbsConfigError(f"plugins.external.backends {name}: cannot read ca_cert_path") from exc
            self._ch = grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=ca), options=opts
            )
        else:
            log.warning("INSECURE: external plugin %s at %s is reached over plaintext gRPC", name, endpoint)
            self._ch = grpc.aio.insecure_channel(target, options=opts)
        self._timeout = timeout_ms / 1000 if timeout_ms else None

    async def _call(self, method: str, req: Any, resp_type: Any) -> Any:
        fn = self._ch.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        try:
            return await fn(req, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("external plugin %s: %s failed: %s", self.name, method, exc.code().name)
            raise PluginInternalError(
                f"Plugin internal error: gRPC error from plugin: {exc.code().name}"
            ) from exc

    @staticmethod
    def _fields(c: PluginCall) -> dict[str, Any]:
        return {"body": c.body, "query": dict(c.query), "path": list(c.path), "method": c.method}

    async def handle(self, c: PluginCall) -> bytes:
        resp = await self._call("Handle", pb.PluginRequest(**self._fields(c)), pb.PluginResponse)
        if resp.status_code == 0 or 200 <= resp.status_code <= 299:
            return bytes(resp.body)
        raise PluginInternalError(
            f"Plugin internal error: plugin '{self.name}' returned HTTP status {resp.status_code}"
        )

    async def validate_auth(self, c: PluginCall) -> bool:
        resp = await self._call(
            "ValidateAuth", pb.ValidateAuthRequest(**self._fields(c)), pb.ValidateAuthResponse
        )
        return bool(resp.requires_admin_auth)

    async def encrypted(self, c: PluginCall) -> bool:
        resp = await self._call(
            "NeedsEncryption", pb.NeedsEncryptionRequest(**self._fields(c)), pb.NeedsEncryptionResponse
        )
        return bool(resp.requires_payload_encryption)

    async def close(self) -> None:
        await self._ch.close()


class ExternalPlugin:
    """The ``external`` plugin: picks the backend by the first path segment after ``external``."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.backends: dict[str, ExternalBackend] = {}
        for b in options.get("backends", []):
            name = b["name"]
            if name in self.backends:
                raise KbsConfigError(f"Duplicate backend name '{name}' in external plugin config")
            self.backends[name] = ExternalBackend(
                name, b["endpoint"], timeout_ms=b.get("timeout_ms"), ca_cert_path=b.get("ca_cert_path")
            )

    def _backend(self, c: PluginCall) -> tuple[ExternalBackend, PluginCall]:
        if not c.path or not c.path[0]:
            raise PluginInternalError("Plugin internal error: external plugin name missing from request path")
        b = self.backends.get(c.path[0])
        if b is None:
            raise PluginInternalError(
                f"Plugin internal error: external plugin '{c.path[0][:64]}' not registered"
            )
        return b, PluginCall(c.body, c.query, list(c.path[1:]), c.method)

    async def validate_auth(self, c: PluginCall) -> bool:
        b, sub = self._backend(c)
        return await b.validate_auth(sub)

    async def handle(self, c: PluginCall) -> bytes:
        b, sub = self._backend(c)
        return await b.handle(sub)

    async def encrypted(self, c: PluginCall) -> bool:
        b, sub = self._backend(c)
        return await b.encrypted(sub)

    async def close(self) -> None:
        for b in self.backends.values():
            await b.close()
