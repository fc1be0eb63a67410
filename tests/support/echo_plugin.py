"""A KBS external plugin server for tests, on trustee's ``kbs.plugin.v1.KbsPlugin`` gRPC API
(``kbs/protos/plugin.proto``): ``Handle`` answers ``echo:<method>:<path>:<body>``; POST and
DELETE need admin auth; GET answers are to be JWE-sealed; the path ``fail`` answers HTTP 500.

    async with echo_plugin() as port: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from kbs.protos import plugin_pb2 as pb

__all__ = ["echo_plugin"]

SERVICE = "kbs.plugin.v1.KbsPlugin"


async def _handle(req: pb.PluginRequest, ctx: Any) -> pb.PluginResponse:
    if list(req.path) == ["fail"]:
        return pb.PluginResponse(body=b"boom", status_code=500)
    body = f"echo:{req.method}:{'/'.join(req.path)}:".encode() + req.body
    return pb.PluginResponse(body=body, status_code=200, content_type="text/plain")


async def _validate(req: pb.ValidateAuthRequest, ctx: Any) -> pb.ValidateAuthResponse:
    return pb.ValidateAuthResponse(requires_admin_auth=req.method in ("POST", "DELETE"))


async def _encrypt(req: pb.NeedsEncryptionRequest, ctx: Any) -> pb.NeedsEncryptionResponse:
    return pb.NeedsEncryptionResponse(requires_payload_encryption=req.method == "GET")


def _h(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
    )


@asynccontextmanager
async def echo_plugin() -> AsyncIterator[int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Handle": _h(_handle, pb.PluginRequest, pb.PluginResponse),
        "ValidateAuth": _h(_validate, pb.ValidateAuthRequest, pb.ValidateAuthResponse),
        "NeedsEncryption": _h(_encrypt, pb.NeedsEncryptionRequest, pb.NeedsEncryptionResponse),
    })])  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)
