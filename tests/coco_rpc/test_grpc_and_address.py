"""The same services over gRPC, and address parsing."""

from __future__ import annotations

import pytest

from coco_rpc import Code, RpcError, bind, connect, parse_address
from coco_rpc.grpc_transport import GrpcServer
from coco_rpc.protos import api_pb2
from coco_rpc.ttrpc import TtrpcClient


class _Impl:
    async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
        if req.ResourcePath == "deny":
            raise RpcError(Code.PERMISSION_DENIED, "policy denied")
        return api_pb2.GetResourceResponse(Resource=b"got " + req.ResourcePath.encode())


async def test_grpc_round_trip_and_status() -> None:
    svc = bind(api_pb2.DESCRIPTOR.services_by_name["GetResourceService"], _Impl())
    srv = GrpcServer("127.0.0.1:0", [svc])
    await srv.start()
    try:
        client = connect(f"127.0.0.1:{srv.port}")
        try:
            r = await client.call(
                "api.GetResourceService",
                "GetResource",
                api_pb2.GetResourceRequest(ResourcePath="x"),
                api_pb2.GetResourceResponse,
                timeout=10,
            )
            assert r.Resource == b"got x"
            with pytest.raises(RpcError) as ei:
                await client.call(
                    "api.GetResourceService",
                    "GetResource",
                    api_pb2.GetResourceRequest(ResourcePath="deny"),
                    api_pb2.GetResourceResponse,
                    timeout=10,
                )
            assert ei.value.code == Code.PERMISSION_DENIED
            assert ei.value.message == "policy denied"
        finally:
            await client.close()
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("unix:///run/confidential-containers/cdh.sock", "unix", "/run/confidential-containers/cdh.sock"),
        ("unix:/tmp/a.sock", "unix", "/tmp/a.sock"),
        ("/tmp/a.sock", "unix", "/tmp/a.sock"),
        ("127.0.0.1:50002", "tcp", "127.0.0.1:50002"),
        ("tcp://127.0.0.1:50000", "tcp", "127.0.0.1:50000"),
    ],
)
def test_parse_address(text: str, kind: str, target: str) -> None:
    a = parse_address(text)
    assert (a.kind, a.target) == (kind, target)


@pytest.mark.parametrize("text", ["unix://relative.sock", "nonsense", "host:port"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_connect_picks_transport() -> None:
    assert isinstance(connect("unix:///tmp/x.sock"), TtrpcClient)
