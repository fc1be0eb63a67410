"""The RPC layer shared by the Attestation Agent and the Confidential Data Hub:
upstream's protobuf services served over ttRPC (Unix sockets, the production
transport) and gRPC (the development transport), plus clients for both.

Generated message modules live in :mod:`coco_rpc.protos`
(``attestation_agent_pb2``, ``api_pb2``, ``keyprovider_pb2``).
"""

from __future__ import annotations

from coco_rpc.address import Address, parse_address
from coco_rpc.client import RpcClient, connect
from coco_rpc.errors import Code, RpcError
from coco_rpc.limits import ServerLimits
from coco_rpc.names import (
    AA_GRPC_ADDRESS,
    AA_SERVICE,
    AA_SOCKET,
    CDH_GRPC_ADDRESS,
    CDH_SOCKET,
    GET_RESOURCE_SERVICE,
    IMAGE_PULL_SERVICE,
    KEY_PROVIDER_SERVICE,
    SEALED_SECRET_SERVICE,
    SECURE_MOUNT_SERVICE,
)
from coco_rpc.serve import serve
from coco_rpc.service import Method, Service, bind

__all__ = [
    "AA_GRPC_ADDRESS",
    "AA_SERVICE",
    "AA_SOCKET",
    "CDH_GRPC_ADDRESS",
    "CDH_SOCKET",
    "GET_RESOURCE_SERVICE",
    "IMAGE_PULL_SERVICE",
    "KEY_PROVIDER_SERVICE",
    "SEALED_SECRET_SERVICE",
    "SECURE_MOUNT_SERVICE",
    "Address",
    "Code",
    "Method",
    "RpcClient",
    "RpcError",
    "ServerLimits",
    "Service",
    "bind",
    "connect",
    "parse_address",
    "serve",
]
