"""A small client for the Attestation Agent's RPC service.

Only the client stubs: the CDH never imports AA code. It talks to whatever
listens on ``[aa] aa_socket`` (ttRPC for ``unix://``, gRPC for host:port).
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from google.protobuf.message import Message

from coco_rpc import AA_SERVICE, Code, RpcError, connect
from coco_rpc.client import RpcClient
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2

__all__ = ["GET_TOKEN_TIMEOUT", "MEASURE_TIMEOUT", "AaClient", "ExtendResult"]

R = TypeVar("R", bound=Message)

GET_TOKEN_TIMEOUT = 50.0  # upstream CDH -> AA GetToken
MEASURE_TIMEOUT = 10.0  # upstream CDH -> AA ExtendRuntimeMeasurement


class ExtendResult(enum.IntEnum):
    """What AA answers to ExtendRuntimeMeasurement (proto ``RuntimeMeasurementResult``)."""

    OK = 0
    NOT_SUPPORTED = 1
    NOT_ENABLED = 2


class AaClient:
    """One lazily created client of the AA, shared by concurrent callers.

    The transport reconnects by itself after the AA restarts: a call that finds
    the old connection dead fails with ``UNAVAILABLE`` and the next call opens a
    new one, so idempotent calls are simply retried once. A failed or timed-out
    call never closes the connection under the other calls in flight on it.
    """

    def __init__(
        self,
        address: str,
        *,
        token_timeout: float = GET_TOKEN_TIMEOUT,
        measure_timeout: float = MEASURE_TIMEOUT,
    ) -> None:
        self.address = address
        self.token_timeout = token_timeout
        self.measure_timeout = measure_timeout
        self._client: RpcClient | None = None

    def _rpc(self) -> RpcClient:
        if self._client is None:  # created on the running loop (gRPC channels need one)
            self._client = connect(self.address)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _call(
        self, method: str, request: Any, response_type: type[R], timeout: float, *, idempotent: bool = True
    ) -> R:
        try:
            return await self._rpc().call(AA_SERVICE, method, request, response_type, timeout=timeout)
        except RpcError as exc:
            if exc.code != Code.UNAVAILABLE or not idempotent:
                raise
        return await self._rpc().call(AA_SERVICE, method, request, response_type, timeout=timeout)

    async def get_token(self, token_type: str = "kbs") -> bytes:  # noqa: S107 (a token *type*)
        resp = await self._call(
            "GetToken",
            aa_pb2.GetTokenRequest(TokenType=token_type),
            aa_pb2.GetTokenResponse,
            self.token_timeout,
        )
        return resp.Token

    async def get_evidence(self, runtime_data: bytes) -> bytes:
        resp = await self._call(
            "GetEvidence",
            aa_pb2.GetEvidenceRequest(RuntimeData=runtime_data),
            aa_pb2.GetEvidenceResponse,
            self.token_timeout,
        )
        return resp.Evidence

    async def get_additional_evidence(self, runtime_data: bytes) -> bytes:
        resp = await self._call(
            "GetAdditionalEvidence",
            aa_pb2.GetAdditionalEvidenceRequest(RuntimeData=runtime_data),
            aa_pb2.GetEvidenceResponse,
            self.token_timeout,
        )
        return resp.Evidence

    async def extend_runtime_measurement(self, domain: str, operation: str, content: str) -> ExtendResult:
        resp = await self._call(
            "ExtendRuntimeMeasurement",
            aa_pb2.ExtendRuntimeMeasurementRequest(Domain=domain, Operation=operation, Content=content),
            aa_pb2.ExtendRuntimeMeasurementResponse,
            self.measure_timeout,
            idempotent=False,
        )
        return ExtendResult(int(resp.Result))
