"""AaClient against the real attestation-agent process: it reconnects after
the AA restarts, and reports ExtendRuntimeMeasurement results; and against a
stalling in-process AA: one timed-out call leaves the others alone."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cdh.aa import AaClient, ExtendResult
from coco_rpc import Code, RpcError, bind, serve
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2
from tests.cdh.stack import unix_listening, wait_listening
from tests.support.aa import start_aa


async def test_reconnects_after_aa_restart(tmp_path: Path) -> None:
    sock = tmp_path / "aa.sock"
    client = AaClient(f"unix://{sock}", measure_timeout=60)  # slack for a loaded CI box
    try:
        with start_aa(tmp_path) as aa:
            assert aa.socket_path == sock
            wait_listening(sock)  # start_aa only waits for the file (bind), not for listen()
            # the AA's event log is off by default: NOT_ENABLED (CDH only warns on it)
            assert await client.extend_runtime_measurement("d", "o", "c") is ExtendResult.NOT_ENABLED
            with pytest.raises(RpcError):
                await client.get_token("no-such-type")
        with pytest.raises(RpcError) as ei:
            await client.extend_runtime_measurement("d", "o", "c")
        assert ei.value.code == Code.UNAVAILABLE
        with start_aa(tmp_path):
            wait_listening(sock)
            # exactly one call: the client must reconnect by itself
            assert await client.extend_runtime_measurement("d", "o", "c") is ExtendResult.NOT_ENABLED
    finally:
        await client.close()


def test_socket_file_is_not_readiness(tmp_path: Path) -> None:
    """Why the tests wait with wait_listening: a bound, not yet listening socket
    has its file but refuses connections (the old flake of the restart test)."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        assert path.exists() and not unix_listening(path)
        srv.listen()
        assert unix_listening(path)


class _StallingAa:
    """An in-process AA whose ExtendRuntimeMeasurement never answers and whose
    GetToken answers once released (the real AA cannot be made to stall)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.token_calls = 0

    async def GetToken(self, req: aa_pb2.GetTokenRequest) -> aa_pb2.GetTokenResponse:
        self.token_calls += 1
        await self.release.wait()
        return aa_pb2.GetTokenResponse(Token=b"tok")

    async def ExtendRuntimeMeasurement(
        self, req: aa_pb2.ExtendRuntimeMeasurementRequest
    ) -> aa_pb2.ExtendRuntimeMeasurementResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_timed_out_call_leaves_other_calls_alone(tmp_path: Path) -> None:
    """One call timing out must not close the connection under the calls still in
    flight on it (they would fail, or be sent to the AA a second time)."""
    fake = _StallingAa()
    sock = tmp_path / "aa.sock"
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(
            f"unix://{sock}",
            [bind(aa_pb2.DESCRIPTOR.services_by_name["AttestationAgentService"], fake)],
            stop=stop,
        )
    )
    client = AaClient(f"unix://{sock}", measure_timeout=0.3)
    try:
        while not sock.exists():
            await asyncio.sleep(0.01)
        token = asyncio.create_task(client.get_token("kbs"))
        while fake.token_calls == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(RpcError) as ei:
            await client.extend_runtime_measurement("d", "o", "c")
        assert ei.value.code == Code.DEADLINE_EXCEEDED
        fake.release.set()
        assert await asyncio.wait_for(token, 10) == b"tok"
        assert fake.token_calls == 1  # answered on the first try, not resent
    finally:
        await client.close()
        stop.set()
        await server
