"""ttRPC server and client: framing, errors, limits, timeouts, concurrency.

The raw-socket tests speak the framing from the spec by hand (10-byte header,
protobuf ttrpc.Request/Response), independent of TtrpcClient."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from coco_rpc import Code, RpcError, bind
from coco_rpc.protos import api_pb2, attestation_agent_pb2, ttrpc_pb2
from coco_rpc.ttrpc import MESSAGE_LENGTH_MAX, TtrpcClient, TtrpcServer


async def _get(c: TtrpcClient, path: str, timeout: float | None = None) -> api_pb2.GetResourceResponse:
    return await c.call(
        "api.GetResourceService",
        "GetResource",
        api_pb2.GetResourceRequest(ResourcePath=path),
        api_pb2.GetResourceResponse,
        timeout=timeout,
    )


class _Resources:
    def __init__(self) -> None:
        self.calls = 0

    async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
        self.calls += 1
        if req.ResourcePath == "kbs:///missing":
            raise RpcError(Code.NOT_FOUND, "no such resource")
        if req.ResourcePath == "kbs:///boom":
            raise ValueError("exploded")
        if req.ResourcePath == "kbs:///slow":
            await asyncio.sleep(5)
        if req.ResourcePath == "kbs:///big":
            return api_pb2.GetResourceResponse(Resource=b"x" * (MESSAGE_LENGTH_MAX + 10))
        return api_pb2.GetResourceResponse(Resource=req.ResourcePath.encode()[::-1])


def _service() -> tuple[_Resources, list[object]]:
    impl = _Resources()
    svc = bind(
        api_pb2.DESCRIPTOR.services_by_name["GetResourceService"], impl, error_prefix="[CDH] [ERROR]: "
    )
    aa = bind(attestation_agent_pb2.DESCRIPTOR.services_by_name["AttestationAgentService"], object())
    return impl, [svc, aa]


@pytest.fixture
async def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    impl, services = _service()
    srv = TtrpcServer(tmp_path / "sub" / "s.sock", services)  # type: ignore[arg-type]
    await srv.start()
    yield impl, srv
    await srv.close()


def _raw_call(
    path: Path, body: bytes, stream_id: int = 1, declared: int | None = None
) -> tuple[int, int, bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    length = len(body) if declared is None else declared
    s.sendall(struct.pack(">IIBB", length, stream_id, 1, 0) + body)
    hdr = b""
    while len(hdr) < 10:
        chunk = s.recv(10 - len(hdr))
        assert chunk, "server closed the connection"
        hdr += chunk
    n, sid, mtype, _ = struct.unpack(">IIBB", hdr)
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    s.close()
    return sid, mtype, data


async def test_raw_frame_round_trip(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    req = ttrpc_pb2.Request(
        service="api.GetResourceService",
        method="GetResource",
        payload=api_pb2.GetResourceRequest(ResourcePath="abc").SerializeToString(),
    )
    sid, mtype, data = await asyncio.to_thread(_raw_call, srv.path, req.SerializeToString(), 7)
    assert (sid, mtype) == (7, 2)
    resp = ttrpc_pb2.Response.FromString(data)
    assert resp.status.code == 0
    assert api_pb2.GetResourceResponse.FromString(resp.payload).Resource == b"cba"


async def test_unknown_service_method_and_unserved_codes_as_ttrpc_rust(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    async with TtrpcClient(srv.path) as c:
        with pytest.raises(RpcError) as ei:
            await c.call("api.Nope", "X", api_pb2.GetResourceRequest(), api_pb2.GetResourceResponse)
        assert (ei.value.code, ei.value.message) == (Code.INVALID_ARGUMENT, "api.Nope service does not exist")
        with pytest.raises(RpcError) as ei:
            await c.call(
                "api.GetResourceService", "Nope", api_pb2.GetResourceRequest(), api_pb2.GetResourceResponse
            )
        assert (ei.value.code, ei.value.message) == (Code.UNIMPLEMENTED, "Nope method")
        with pytest.raises(RpcError) as ei:
            await c.call(
                "attestation_agent.AttestationAgentService",
                "BindInitData",
                attestation_agent_pb2.BindInitDataRequest(),
                attestation_agent_pb2.BindInitDataResponse,
            )
        assert ei.value.code == Code.NOT_FOUND
        assert ei.value.message == "/attestation_agent.AttestationAgentService/BindInitData is not supported"
        # the connection survives all three
        assert (await _get(c, "ab")).Resource == b"ba"


async def test_malformed_inner_message_is_unknown_as_ttrpc_rust(server) -> None:  # type: ignore[no-untyped-def]
    impl, srv = server
    req = ttrpc_pb2.Request(service="api.GetResourceService", method="GetResource", payload=b"\xff\xff\xff")
    _, _, data = await asyncio.to_thread(_raw_call, srv.path, req.SerializeToString())
    status = ttrpc_pb2.Response.FromString(data).status
    assert status.code == Code.UNKNOWN
    assert "malformed request message" in status.message
    assert impl.calls == 0


async def test_errors_map_to_status(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    async with TtrpcClient(srv.path) as c:
        with pytest.raises(RpcError) as ei:
            await _get(c, "kbs:///missing")
        assert ei.value.code == Code.NOT_FOUND
        with pytest.raises(RpcError) as ei:
            await _get(c, "kbs:///boom")
        assert ei.value.code == Code.INTERNAL
        assert ei.value.message == "[CDH] [ERROR]: exploded"


async def test_concurrent_calls_on_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    impl, srv = server
    async with TtrpcClient(srv.path) as c:
        paths = [f"p{i}" for i in range(50)]
        results = await asyncio.gather(
            *(
                c.call(
                    "api.GetResourceService",
                    "GetResource",
                    api_pb2.GetResourceRequest(ResourcePath=p),
                    api_pb2.GetResourceResponse,
                )
                for p in paths
            )
        )
    assert [r.Resource for r in results] == [p.encode()[::-1] for p in paths]
    assert impl.calls == 50


async def test_server_side_deadline_from_timeout_nano(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    req = ttrpc_pb2.Request(
        service="api.GetResourceService",
        method="GetResource",
        payload=api_pb2.GetResourceRequest(ResourcePath="kbs:///slow").SerializeToString(),
        timeout_nano=200_000_000,
    )
    _, _, data = await asyncio.to_thread(_raw_call, srv.path, req.SerializeToString())
    assert ttrpc_pb2.Response.FromString(data).status.code == Code.DEADLINE_EXCEEDED


async def test_client_timeout(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    async with TtrpcClient(srv.path) as c:
        with pytest.raises(RpcError) as ei:
            await _get(c, "kbs:///slow", timeout=0.2)
        assert ei.value.code == Code.DEADLINE_EXCEEDED


async def test_oversized_request_is_refused_and_stream_stays_usable(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    big = b"\0" * (MESSAGE_LENGTH_MAX + 1)

    def two_frames() -> list[ttrpc_pb2.Response]:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(srv.path))
        ok = ttrpc_pb2.Request(
            service="api.GetResourceService",
            method="GetResource",
            payload=api_pb2.GetResourceRequest(ResourcePath="ok").SerializeToString(),
        ).SerializeToString()
        s.sendall(struct.pack(">IIBB", len(big), 1, 1, 0) + big + struct.pack(">IIBB", len(ok), 3, 1, 0) + ok)
        out = []
        buf = b""
        while len(out) < 2:
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
            while len(buf) >= 10:
                n = struct.unpack(">I", buf[:4])[0]
                if len(buf) < 10 + n:
                    break
                out.append(
                    (struct.unpack(">I", buf[4:8])[0], ttrpc_pb2.Response.FromString(buf[10 : 10 + n]))
                )
                buf = buf[10 + n :]
        s.close()
        return [r for _, r in sorted(out, key=lambda t: t[0])]

    first, second = await asyncio.to_thread(two_frames)
    assert first.status.code == Code.INVALID_ARGUMENT
    assert first.status.message == "message length 4194305 exceed maximum message size of 4194304"
    assert second.status.code == 0
    assert api_pb2.GetResourceResponse.FromString(second.payload).Resource == b"ko"


async def test_oversized_response_becomes_an_error(server) -> None:  # type: ignore[no-untyped-def]
    _, srv = server
    async with TtrpcClient(srv.path) as c:
        with pytest.raises(RpcError) as ei:
            await _get(c, "kbs:///big")
        assert ei.value.code == Code.INVALID_ARGUMENT
        assert ei.value.message.startswith("message length 41943")
        assert ei.value.message.endswith(" exceed maximum message size of 4194304")


async def test_client_request_over_limit_is_refused_locally(server) -> None:  # type: ignore[no-untyped-def]
    impl, srv = server
    async with TtrpcClient(srv.path) as c:
        with pytest.raises(RpcError) as ei:
            await c.call(
                "api.GetResourceService",
                "GetResource",
                api_pb2.GetResourceRequest(ResourcePath="x" * (MESSAGE_LENGTH_MAX + 1)),
                api_pb2.GetResourceResponse,
            )
        assert ei.value.code == Code.RESOURCE_EXHAUSTED
    assert impl.calls == 0


async def test_connect_failure_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(RpcError) as ei:
        await TtrpcClient(tmp_path / "nothing.sock").call(
            "a.B", "C", api_pb2.GetResourceRequest(), api_pb2.GetResourceResponse
        )
    assert ei.value.code == Code.UNAVAILABLE


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    _, services = _service()
    srv = TtrpcServer(path, services)  # type: ignore[arg-type]
    await srv.start()
    try:
        async with TtrpcClient(path) as c:
            r = await _get(c, "ab")
        assert r.Resource == b"ba"
    finally:
        await srv.close()
    assert not path.exists()


async def test_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    """A second server on a path a live server serves refuses to start, and leaves the
    first one reachable (upstream deletes its socket)."""
    path = tmp_path / "s.sock"
    _, services = _service()
    first = TtrpcServer(path, services)  # type: ignore[arg-type]
    await first.start()
    try:
        second = TtrpcServer(path, services)  # type: ignore[arg-type]
        with pytest.raises(OSError, match="another server is serving on unix://"):
            await second.start()
        await second.close()
        async with TtrpcClient(path) as c:
            assert (await _get(c, "ab")).Resource == b"ba"
    finally:
        await first.close()
    assert not path.exists()


async def test_server_close_drops_open_connections_and_client_reconnects(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    _, services = _service()
    srv = TtrpcServer(path, services)  # type: ignore[arg-type]
    await srv.start()
    client = TtrpcClient(path)
    req = api_pb2.GetResourceRequest(ResourcePath="ab")
    try:
        r = await client.call("api.GetResourceService", "GetResource", req, api_pb2.GetResourceResponse)
        assert r.Resource == b"ba"
        await srv.close()
        # the old connection is gone: the call fails as an RpcError, not a raw OSError
        with pytest.raises(RpcError) as ei:
            await client.call(
                "api.GetResourceService", "GetResource", req, api_pb2.GetResourceResponse, timeout=5
            )
        assert ei.value.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
        # a new server on the same path: the same client object reconnects
        srv = TtrpcServer(path, services)  # type: ignore[arg-type]
        await srv.start()
        r = await client.call(
            "api.GetResourceService", "GetResource", req, api_pb2.GetResourceResponse, timeout=5
        )
        assert r.Resource == b"ba"
    finally:
        await client.close()
        await srv.close()


async def test_requests_in_flight_per_connection_are_bounded(tmp_path: Path) -> None:
    from coco_rpc.ttrpc import MAX_IN_FLIGHT_PER_CONNECTION

    running = 0
    peak = 0
    gate = asyncio.Event()

    class _Blocking:
        async def GetResource(self, req: api_pb2.GetResourceRequest) -> api_pb2.GetResourceResponse:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return api_pb2.GetResourceResponse(Resource=b"ok")

    svc = bind(api_pb2.DESCRIPTOR.services_by_name["GetResourceService"], _Blocking())
    srv = TtrpcServer(tmp_path / "s.sock", [svc])
    await srv.start()
    n = MAX_IN_FLIGHT_PER_CONNECTION * 2
    try:
        async with TtrpcClient(srv.path) as c:
            calls = asyncio.gather(*(_get(c, str(i), timeout=30) for i in range(n)))
            for _ in range(200):
                if running >= MAX_IN_FLIGHT_PER_CONNECTION:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert running == MAX_IN_FLIGHT_PER_CONNECTION
            gate.set()
            results = await calls
        assert len(results) == n and all(r.Resource == b"ok" for r in results)
        assert peak == MAX_IN_FLIGHT_PER_CONNECTION
    finally:
        await srv.close()
