"""In-process CDH for RPC and client tests: the five CDH services over ttRPC, called by a hand-framed client
(tests.support.aa.ttrpc_call, written from the framing notes, not coco_rpc)
and over gRPC.

The resource store is a dict and the command runner a recorder (no
device-mapper here); the image puller is a stand-in object because its
registry side is tested by the pull engineer, and the AA is a small
in-process AttestationAgentService that records ExtendRuntimeMeasurement
(the real AA's event log is off by default, so the exact content could not
be observed there).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cdh.config import CdhConfig, CdhImageConfig, KbcConfig
from cdh.hub import Hub, build_services
from coco_rpc import RpcError, bind, serve
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2
from tests.cdh.conftest import DictResources
from tests.cdh.test_sealed_secret import jwk_of
from tests.cdh.test_secure_mount import Recorder
from tests.support.aa import ttrpc_call

SECRET = os.urandom(24)


@dataclass
class FakePullResult:
    manifest_digest: str


class FakePuller:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.pulls: list[tuple[str, Path]] = []
        self.fail = False

    async def pull(self, image_ref: str, bundle_dir: Path, **_: Any) -> FakePullResult:
        if self.fail:
            raise RuntimeError("registry said no")
        self.pulls.append((image_ref, bundle_dir))
        return FakePullResult("sha256:" + "ab" * 32)


class FakeAa:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.result = aa_pb2.OK

    async def GetToken(self, req: Any) -> Any:
        if req.TokenType != "kbs":
            raise RpcError(13, f"unsupported token type {req.TokenType}")
        return aa_pb2.GetTokenResponse(Token=b'{"token":"t","tee_keypair":"k"}')

    async def GetEvidence(self, req: Any) -> Any:
        return aa_pb2.GetEvidenceResponse(
            Evidence=json.dumps({"report_data": req.RuntimeData.hex()}).encode()
        )

    async def GetAdditionalEvidence(self, req: Any) -> Any:
        return aa_pb2.GetEvidenceResponse(Evidence=b"")

    async def GetTeeType(self, req: Any) -> Any:
        return aa_pb2.GetTeeTypeResponse(tee="sample")

    async def ExtendRuntimeMeasurement(self, req: Any) -> Any:
        self.events.append((req.Domain, req.Operation, req.Content))
        if self.result == -1:
            raise RpcError(13, "event log broken")
        return aa_pb2.ExtendRuntimeMeasurementResponse(Result=self.result)


@dataclass
class Env:
    sock: Path
    aa_sock: Path
    hub: Hub
    aa: FakeAa
    key: ec.EllipticCurvePrivateKey
    rec: Recorder
    tmp: Path

    def call(self, service: str, method: str, payload: bytes) -> tuple[int, str, bytes]:
        return ttrpc_call(self.sock, service, method, payload, timeout=20)

    async def acall(self, service: str, method: str, payload: bytes) -> tuple[int, str, bytes]:
        return await asyncio.to_thread(self.call, service, method, payload)


async def _wait(path: Path) -> None:
    for _ in range(200):
        if path.exists():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    key = ec.generate_private_key(ec.SECP256R1())
    kek = bytes(range(32))
    res = DictResources(
        {
            "kbs:///default/cdh/secret": SECRET,
            "kbs:///default/cdh/sealkey": jwk_of(key),
            "kbs:///default/image-kek/k1": kek,
            "kbs:///default/disk/key": b"disk-key",
        }
    )
    aa_sock, cdh_sock = tmp_path / "aa.sock", tmp_path / "cdh.sock"
    fake_aa = FakeAa()
    stop = asyncio.Event()
    aa_task = asyncio.create_task(
        serve(
            f"unix://{aa_sock}",
            [bind(aa_pb2.DESCRIPTOR.services_by_name["AttestationAgentService"], fake_aa)],
            stop=stop,
        )
    )
    await _wait(aa_sock)
    rec = Recorder()
    (tmp_path / "mapper").mkdir()
    cfg = CdhConfig(
        kbc=KbcConfig("offline_fs_kbc"),
        socket=f"unix://{cdh_sock}",
        aa_socket=f"unix://{aa_sock}",
        image=CdhImageConfig(work_dir=tmp_path / "work"),
    )
    hub = Hub(
        cfg,
        resources=res,
        runner=rec,
        sealed_secret_dir=tmp_path / "ss",
        header_dir=tmp_path / "hdr",
        mapper_dir=tmp_path / "mapper",
        puller_factory=FakePuller,
    )
    cdh_task = asyncio.create_task(serve(cfg.socket, build_services(hub), stop=stop))
    await _wait(cdh_sock)
    try:
        yield Env(cdh_sock, aa_sock, hub, fake_aa, key, rec, tmp_path)
    finally:
        stop.set()
        await asyncio.gather(aa_task, cdh_task)
        await hub.close()
