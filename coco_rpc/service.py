"""Transport-neutral description of an RPC service.

A service implementation is a plain object with one ``async`` method per RPC,
named exactly as in the ``.proto`` file (``GetResource``, ``UnWrapKey``, ...),
taking the request message and returning the response message. It raises
:class:`coco_rpc.errors.RpcError` to choose the status the caller sees; any
other exception becomes ``INTERNAL`` with a message built by the service's
``error_prefix`` (upstream style, e.g. ``"[CDH] [ERROR]: "``).

:func:`bind` turns such an object plus the service descriptor from the
generated ``*_pb2`` module into a :class:`Service`, which the ttRPC and gRPC
servers both serve.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

__all__ = ["Method", "Service", "bind", "message_classes"]

Handler = Callable[[Any], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    name: str
    request_type: type[Message]
    response_type: type[Message]
    handler: Handler | None  # None: declared in the proto, not implemented


@dataclass(frozen=True)
class Service:
    name: str  # "<proto package>.<Service>", e.g. "api.GetResourceService"
    methods: Mapping[str, Method]
    error_prefix: str = ""


def message_classes(descriptor: ServiceDescriptor, method: str) -> tuple[type[Message], type[Message]]:
    """Request and response classes of one RPC of a generated service."""
    m = descriptor.methods_by_name[method]
    return GetMessageClass(m.input_type), GetMessageClass(m.output_type)


def bind(descriptor: ServiceDescriptor, impl: object, *, error_prefix: str = "") -> Service:
    """Bind ``impl``'s async methods to the RPCs that ``descriptor`` declares.

    RPCs that ``impl`` lacks stay declared but unimplemented: callers get
    ``NOT_FOUND "/<service>/<method> is not supported"`` as ttrpc-rust answers.
    """
    methods: dict[str, Method] = {}
    for m in descriptor.methods:
        req, resp = message_classes(descriptor, m.name)
        handler = getattr(impl, m.name, None)
        methods[m.name] = Method(m.name, req, resp, handler)
    return Service(descriptor.full_name, methods, error_prefix)
