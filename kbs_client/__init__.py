"""The KBS protocol (RCAR 0.4.0) client side: TEE key pairs, the attestation
flow, the token-reusing resource client, the admin client and ``kbs-client``.
The wire code it shares with the KBS (URIs, JWE, JWS, JCS) is :mod:`kbs_protocol`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AdminDenied,
    AttestationRejected,
    KbsClientError,
    KbsHttpError,
    PolicyDenied,
    ProtocolError,
    ResourceNotFound,
    TransportError,
    Unauthorized,
    VersionMismatch,
)

# The rest is loaded on first use (PEP 562): importing kbs_client.errors (as the
# CDH does at start-up) must not pull in httpx and the crypto stack.
_LAZY = {
    "AdminClient": "admin",
    "BearerToken": "admin",
    "Ed25519Signer": "admin",
    "PROTOCOL_VERSION": "rcar",
    "Attestation": "rcar",
    "EvidenceSource": "rcar",
    "attest": "rcar",
    "ResourceClient": "resources",
    "TokenProvider": "resources",
    "get_resource": "resources",
    "SampleEvidenceSource": "sample",
    "sample_evidence": "sample",
    "TeeKeyPair": "tee_key",
}

if TYPE_CHECKING:
    from .admin import AdminClient, BearerToken, Ed25519Signer
    from .rcar import PROTOCOL_VERSION, Attestation, EvidenceSource, attest
    from .resources import ResourceClient, TokenProvider, get_resource
    from .sample import SampleEvidenceSource, sample_evidence
    from .tee_key import TeeKeyPair


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "PROTOCOL_VERSION",
    "AdminClient",
    "AdminDenied",
    "Attestation",
    "AttestationRejected",
    "BearerToken",
    "Ed25519Signer",
    "EvidenceSource",
    "KbsClientError",
    "KbsHttpError",
    "PolicyDenied",
    "ProtocolError",
    "ResourceClient",
    "ResourceNotFound",
    "SampleEvidenceSource",
    "TeeKeyPair",
    "TokenProvider",
    "TransportError",
    "Unauthorized",
    "VersionMismatch",
    "attest",
    "get_resource",
    "sample_evidence",
]
