"""The Attestation Agent: evidence, tokens (KBS RCAR, CoCo AS), runtime
measurements and initdata binding, served as
``attestation_agent.AttestationAgentService`` over ttRPC or gRPC.

Run it with the ``attestation-agent`` console script (:mod:`attestation.aa.cli`);
embed it with :class:`AttestationAgent` plus :func:`ttrpc_service` /
:func:`grpc_service` and :func:`coco_rpc.serve`.
"""

from __future__ import annotations

from attestation.aa.agent import AttestationAgent, CompositeEvidenceSource, MeasurementResult
from attestation.aa.config import (
    AaConfig,
    CocoAsConfig,
    EventlogConfig,
    KbsTokenConfig,
    load_config,
    resolve_config,
)
from attestation.aa.errors import AaConfigError, AaError, AaTokenError, InitDataBindError
from attestation.aa.measure import RuntimeMeasurer
from attestation.aa.rpc import grpc_service, ttrpc_service

__all__ = [
    "AaConfig",
    "AaConfigError",
    "AaError",
    "AaTokenError",
    "AttestationAgent",
    "CocoAsConfig",
    "CompositeEvidenceSource",
    "EventlogConfig",
    "InitDataBindError",
    "KbsTokenConfig",
    "MeasurementResult",
    "RuntimeMeasurer",
    "grpc_service",
    "load_config",
    "resolve_config",
    "ttrpc_service",
]
