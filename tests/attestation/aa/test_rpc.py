"""The AA service over real ttRPC and gRPC sockets (in-process server, independent clients)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from attestation.aa.agent import AttestationAgent, MeasurementResult
from attestation.aa.config import AaConfig, EventlogConfig
from attestation.aa.rpc import grpc_service, ttrpc_service
from attestation.errors import UnsupportedPlatform, VerificationError
from attestation.sample import SampleAttester, SampleDeviceAttester
from coco_rpc.grpc_transport import GrpcServer
from coco_rpc.protos import attestation_agent_pb2 as pb
from coco_rpc.ttrpc import TtrpcServer
from tests.support.aa import AA_SERVICE, ttrpc_call


class RecordingMeasurer:
    def __init__(self, unsupported: bool = False) -> None:
        self.events: list[tuple[str, str, str, int | None]] = []
        self.unsupported = unsupported

    async def extend(self, domain: str, operation: str, content: str, register_index: int | None) -> None:
        if self.unsupported:
            raise UnsupportedPlatform("no register here")
        self.events.append((domain, operation, content, register_index))


class MismatchAttester(SampleAttester):
    tee = "snp"

    async def bind_init_data(self, digest: bytes) -> None:
        raise VerificationError("HOSTDATA does not match")


def _agent(**kw: Any) -> AttestationAgent:
    kw.setdefault("devices", [])
    config = kw.pop("config", AaConfig())
    primary = kw.pop("primary", SampleAttester())
    return AttestationAgent(config, primary, **kw)


async def _ttrpc(sock: Path, method: str, msg: Any) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(ttrpc_call, sock, AA_SERVICE, method, msg.SerializeToString())


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    servers: list[TtrpcServer] = []

    async def start(agent: AttestationAgent) -> Path:
        sock = tmp_path / f"aa{len(servers)}.sock"
        srv = TtrpcServer(sock, [ttrpc_service(agent)])
        await srv.start()
        servers.append(srv)
        return sock

    yield start
    for s in servers:
        await s.close()


async def test_ttrpc_evidence_and_tee_type(served: Any) -> None:
    sock = await served(_agent())
    code, msg, out = await _ttrpc(sock, "GetTeeType", pb.GetTeeTypeRequest())
    assert (code, pb.GetTeeTypeResponse.FromString(out).tee) == (0, "sample")
    rd = bytes(range(32))
    code, msg, out = await _ttrpc(sock, "GetEvidence", pb.GetEvidenceRequest(RuntimeData=rd))
    assert code == 0, msg
    ev = json.loads(pb.GetEvidenceResponse.FromString(out).Evidence)
    assert ev == {"svn": "1", "report_data": base64.b64encode(rd).decode()}


async def test_ttrpc_additional_evidence_empty_without_devices(served: Any) -> None:
    sock = await served(_agent())
    code, _, out = await _ttrpc(
        sock, "GetAdditionalEvidence", pb.GetAdditionalEvidenceRequest(RuntimeData=b"x")
    )
    assert code == 0 and pb.GetEvidenceResponse.FromString(out).Evidence == b""
    code, _, out = await _ttrpc(sock, "GetAdditionalTees", pb.GetAdditionalTeesRequest())
    assert code == 0 and list(pb.GetAdditionalTeesResponse.FromString(out).additional_tees) == []


async def test_ttrpc_additional_evidence_with_sampledevice(served: Any) -> None:
    sock = await served(_agent(devices=[SampleDeviceAttester()]))
    rd = b"\x05" * 48
    code, _, out = await _ttrpc(
        sock, "GetAdditionalEvidence", pb.GetAdditionalEvidenceRequest(RuntimeData=rd)
    )
    assert code == 0
    assert json.loads(pb.GetEvidenceResponse.FromString(out).Evidence) == {
        "sampledevice": {"svn": "2", "report_data": base64.b64encode(rd).decode()}
    }
    code, _, out = await _ttrpc(sock, "GetAdditionalTees", pb.GetAdditionalTeesRequest())
    assert list(pb.GetAdditionalTeesResponse.FromString(out).additional_tees) == ["sampledevice"]


async def test_devices_are_probed_lazily(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    async def fake_detect(plat: Any = None, **kw: Any) -> list[Any]:
        calls.append(1)
        return [SampleDeviceAttester()]

    monkeypatch.setattr("attestation.aa.agent.detect_devices", fake_detect)
    agent = AttestationAgent(AaConfig(), SampleAttester())
    sock = await served(agent)
    await _ttrpc(sock, "GetTeeType", pb.GetTeeTypeRequest())
    assert calls == []
    await _ttrpc(sock, "GetAdditionalTees", pb.GetAdditionalTeesRequest())
    await _ttrpc(sock, "GetAdditionalTees", pb.GetAdditionalTeesRequest())
    assert calls == [1]


async def test_ttrpc_bind_init_data_is_not_supported(served: Any) -> None:
    sock = await served(_agent())
    code, msg, _ = await _ttrpc(sock, "BindInitData", pb.BindInitDataRequest(Digest=b"\x00" * 32))
    assert code == 5  # NOT_FOUND
    assert msg == "/attestation_agent.AttestationAgentService/BindInitData is not supported"


async def test_ttrpc_get_token_errors(served: Any) -> None:
    sock = await served(_agent())
    code, msg, _ = await _ttrpc(sock, "GetToken", pb.GetTokenRequest(TokenType="kbs"))
    assert code == 13 and msg.startswith("[ERROR:attestation-agent] AA-KBC get token failed")
    code, msg, _ = await _ttrpc(sock, "GetToken", pb.GetTokenRequest(TokenType="nonsense"))
    assert code == 13 and "unsupported token type" in msg


async def test_runtime_measurement(served: Any) -> None:
    off = await served(_agent(measurer=RecordingMeasurer()))
    req = pb.ExtendRuntimeMeasurementRequest(
        Domain="github.com/confidential-containers",
        Operation="PullImage",
        Content='{"image":"x", "digest":"sha256:00"}',
    )
    code, _, out = await _ttrpc(off, "ExtendRuntimeMeasurement", req)
    assert code == 0
    assert pb.ExtendRuntimeMeasurementResponse.FromString(out).Result == MeasurementResult.NOT_ENABLED

    m = RecordingMeasurer()
    on = await served(_agent(config=AaConfig(eventlog=EventlogConfig(17, True)), measurer=m))
    code, _, out = await _ttrpc(on, "ExtendRuntimeMeasurement", req)
    assert code == 0 and pb.ExtendRuntimeMeasurementResponse.FromString(out).Result == MeasurementResult.OK
    req.RegisterIndex = 9
    await _ttrpc(on, "ExtendRuntimeMeasurement", req)
    assert m.events == [
        ("github.com/confidential-containers", "PullImage", '{"image":"x", "digest":"sha256:00"}', 17),
        ("github.com/confidential-containers", "PullImage", '{"image":"x", "digest":"sha256:00"}', 9),
    ]
    bad = pb.ExtendRuntimeMeasurementRequest(Domain="d", Operation="o", Content="two\nlines")
    code, msg, _ = await _ttrpc(on, "ExtendRuntimeMeasurement", bad)
    assert code == 13 and "newline" in msg and len(m.events) == 2

    unsup = await served(
        _agent(
            config=AaConfig(eventlog=EventlogConfig(17, True)), measurer=RecordingMeasurer(unsupported=True)
        )
    )
    code, _, out = await _ttrpc(unsup, "ExtendRuntimeMeasurement", req)
    assert pb.ExtendRuntimeMeasurementResponse.FromString(out).Result == MeasurementResult.NOT_SUPPORTED


async def test_oversized_runtime_data(served: Any) -> None:
    sock = await served(_agent())
    code, msg, _ = await _ttrpc(sock, "GetEvidence", pb.GetEvidenceRequest(RuntimeData=b"x" * (65 * 1024)))
    assert code == 13 and "too large" in msg


async def test_grpc_surface_including_bind_init_data() -> None:
    srv = GrpcServer("127.0.0.1:0", [grpc_service(_agent())])
    await srv.start()
    bad = GrpcServer("127.0.0.1:0", [grpc_service(_agent(primary=MismatchAttester()))])
    await bad.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            tee = ch.unary_unary(
                f"/{AA_SERVICE}/GetTeeType",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.GetTeeTypeResponse.FromString,
            )
            assert (await tee(pb.GetTeeTypeRequest(), timeout=10)).tee == "sample"
            ev = ch.unary_unary(
                f"/{AA_SERVICE}/GetEvidence",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.GetEvidenceResponse.FromString,
            )
            r = await ev(pb.GetEvidenceRequest(RuntimeData=b"abc"), timeout=10)
            assert json.loads(r.Evidence)["report_data"] == "YWJj"
            bind = ch.unary_unary(
                f"/{AA_SERVICE}/BindInitData",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.BindInitDataResponse.FromString,
            )
            # sample: unsupported -> logged, OK
            await bind(pb.BindInitDataRequest(Digest=b"\x01" * 48), timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bad.port}") as ch:
            bind = ch.unary_unary(
                f"/{AA_SERVICE}/BindInitData",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.BindInitDataResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await bind(pb.BindInitDataRequest(Digest=b"\x01" * 48), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INTERNAL
            assert "HOSTDATA does not match" in (ei.value.details() or "")
    finally:
        await srv.close()
        await bad.close()


class ExplodingAttester(SampleAttester):
    async def get_evidence(self, report_data: bytes) -> Any:
        raise RuntimeError("device went away")


async def test_unexpected_errors_carry_the_upstream_prefix(served: Any) -> None:
    sock = await served(_agent(primary=ExplodingAttester()))
    code, msg, _ = await _ttrpc(sock, "GetEvidence", pb.GetEvidenceRequest(RuntimeData=b"x"))
    assert code == 13 and msg == "[ERROR:attestation-agent] device went away"
