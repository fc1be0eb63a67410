"""A small client for the Attestation Agent's RPC service.

Only the client stubs: the CDH never imports AA code. It talks to whatever
listens on ``[aa] aa_socket`` (ttRPC for ``unix://``, gRPC for host:port).
"""

from __future__ import annotations

import asyncio
import enum

from coco_rpc import AA_SERVICE, RpcError, connect
from coco_rpc.client import RpcClient
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2

__all__ = ["GET_TOKEN_TIMEOUT", "MEASURE_TIMEOUT", "AaClient", "MeasurementResult"]

GET_TOKEN_TIMEOUT = 50.0  # upstream CDH -> AA GetToken
MEASURE_TIMEOUT = 10.0  # upstream CDH -> AA ExtendRuntimeMeasurement


class MeasurementResult(enum.IntEnum):
    OK = 0
    NOT_SUPPORTED = 1
    NOT_ENABLED = 2


class AaClient:
    """One lazily opened connection to the AA, reopened after a failure."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: RpcClient | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> RpcClient:
        async with self._lock:
            if self._client is None:
                self._client = connect(self.address)
            return self._client

    async def _drop(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def close(self) -> None:
        await self._drop()

    async def get_token(self, token_type: str = "kbs") -> bytes:  # noqa: S107 (a token *type*)
        client = await self._get()
        try:
            resp = await client.call(
                AA_SERVICE,
                "GetToken",
                aa_pb2.GetTokenRequest(TokenType=token_type),
                aa_pb2.GetTokenResponse,
                timeout=GET_TOKEN_TIMEOUT,
            )
        except RpcError:
            await self._drop()
            raise
        return resp.Token

    async def get_evidence(self, runtime_data: bytes) -> bytes:
        client = await self._get()
        resp = await client.call(
            AA_SERVICE,
            "GetEvidence",
            aa_pb2.GetEvidenceRequest(RuntimeData=runtime_data),
            aa_pb2.GetEvidenceResponse,
            timeout=GET_TOKEN_TIMEOUT,
        )
        return resp.Evidence

    async def get_additional_evidence(self, runtime_data: bytes) -> bytes:
        client = await self._get()
        resp = await client.call(
            AA_SERVICE,
            "GetAdditionalEvidence",
            aa_pb2.GetAdditionalEvidenceRequest(RuntimeData=runtime_data),
            aa_pb2.GetEvidenceResponse,
            timeout=GET_TOKEN_TIMEOUT,
        )
        return resp.Evidence

    async def extend_runtime_measurement(
        self, domain: str, operation: str, content: str
    ) -> MeasurementResult:
        client = await self._get()
        resp = await client.call(
            AA_SERVICE,
            "ExtendRuntimeMeasurement",
            aa_pb2.ExtendRuntimeMeasurementRequest(Domain=domain, Operation=operation, Content=content),
            aa_pb2.ExtendRuntimeMeasurementResponse,
            timeout=MEASURE_TIMEOUT,
        )
        return MeasurementResult(int(resp.Result))
