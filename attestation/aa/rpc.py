"""``attestation_agent.AttestationAgentService`` over :mod:`coco_rpc`.

Two bindings, as upstream ships two binaries: over ttRPC ``BindInitData`` is
not implemented (callers get ``NOT_FOUND "/attestation_agent.AttestationAgentService/BindInitData
is not supported"``, as ttrpc-rust's generated default answers); over gRPC it works.
Failures are ``INTERNAL`` with upstream's ``[ERROR:attestation-agent] ...`` text
followed by the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from attestation.aa.agent import AttestationAgent
from attestation.errors import AttestationError
from coco_rpc import Code, RpcError, Service, bind
from coco_rpc.protos import attestation_agent_pb2 as pb

__all__ = ["AGENT_NAME", "AaService", "grpc_service", "ttrpc_service"]

log = logging.getLogger(__name__)

AGENT_NAME = "attestation-agent"
T = TypeVar("T")
_PREFIX = f"[ERROR:{AGENT_NAME}] "


def _error(what: str, exc: Exception) -> RpcError:
    log.error("%s: %s", what, exc)
    return RpcError(Code.INTERNAL, f"[ERROR:{AGENT_NAME}] {what}: {exc}")


async def _guard(what: str, op: Callable[[], Awaitable[T]]) -> T:
    try:
        return await op()
    except RpcError:
        raise
    except (AttestationError, ValueError, OSError) as exc:
        raise _error(what, exc) from exc


class AaService:
    """The ttRPC surface (no ``BindInitData``)."""

    def __init__(self, agent: AttestationAgent) -> None:
        self.agent = agent

    async def GetEvidence(self, req: pb.GetEvidenceRequest) -> pb.GetEvidenceResponse:
        ev = await _guard("AA-KBC get evidence failed", lambda: self.agent.get_evidence(req.RuntimeData))
        return pb.GetEvidenceResponse(Evidence=ev)

    async def GetAdditionalEvidence(self, req: pb.GetAdditionalEvidenceRequest) -> pb.GetEvidenceResponse:
        what = "AA-KBC get additional evidence failed"
        ev = await _guard(what, lambda: self.agent.get_additional_evidence(req.RuntimeData))
        return pb.GetEvidenceResponse(Evidence=ev)

    async def GetToken(self, req: pb.GetTokenRequest) -> pb.GetTokenResponse:
        token = await _guard("AA-KBC get token failed", lambda: self.agent.get_token(req.TokenType))
        return pb.GetTokenResponse(Token=token)

    async def ExtendRuntimeMeasurement(
        self, req: pb.ExtendRuntimeMeasurementRequest
    ) -> pb.ExtendRuntimeMeasurementResponse:
        index = req.RegisterIndex if req.HasField("RegisterIndex") else None
        result = await _guard(
            "AA extend runtime measurement failed",
            lambda: self.agent.extend_runtime_measurement(req.Domain, req.Operation, req.Content, index),
        )
        return pb.ExtendRuntimeMeasurementResponse(Result=int(result))  # type: ignore[arg-type]

    async def GetTeeType(self, req: pb.GetTeeTypeRequest) -> pb.GetTeeTypeResponse:
        return pb.GetTeeTypeResponse(tee=self.agent.tee())

    async def GetAdditionalTees(self, req: pb.GetAdditionalTeesRequest) -> pb.GetAdditionalTeesResponse:
        tees = await _guard("AA get additional tees failed", self.agent.additional_tees)
        return pb.GetAdditionalTeesResponse(additional_tees=tees)


class _GrpcAaService(AaService):
    """The gRPC surface: everything, including ``BindInitData``."""

    async def BindInitData(self, req: pb.BindInitDataRequest) -> pb.BindInitDataResponse:
        await _guard("AA bind init data failed", lambda: self.agent.bind_init_data(req.Digest))
        return pb.BindInitDataResponse()


def ttrpc_service(agent: AttestationAgent) -> Service:
    return bind(
        pb.DESCRIPTOR.services_by_name["AttestationAgentService"], AaService(agent), error_prefix=_PREFIX
    )


def grpc_service(agent: AttestationAgent) -> Service:
    return bind(
        pb.DESCRIPTOR.services_by_name["AttestationAgentService"], _GrpcAaService(agent), error_prefix=_PREFIX
    )
