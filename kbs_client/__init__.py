"""The KBS protocol (RCAR 0.4.0) client side: TEE key pairs and JWE,
resource URIs, the attestation flow, the admin client and ``kbs-client``."""

from __future__ import annotations

from .admin import AdminClient, BearerToken, Ed25519Signer
from .errors import (
    AdminDenied,
    AttestationRejected,
    InvalidUri,
    JweError,
    KbsClientError,
    KbsHttpError,
    PolicyDenied,
    ProtocolError,
    ResourceNotFound,
    TeeKeyError,
    TokenError,
    TransportError,
    Unauthorized,
    VersionMismatch,
)
from .jwe import TeePubKey
from .rcar import PROTOCOL_VERSION, Attestation, EvidenceSource, attest
from .resources import ResourceClient, TokenProvider, get_resource
from .sample import SampleEvidenceSource, sample_evidence
from .tee_key import TeeKeyPair
from .uri import ResourceUri

__all__ = [
    "PROTOCOL_VERSION",
    "AdminClient",
    "AdminDenied",
    "Attestation",
    "AttestationRejected",
    "BearerToken",
    "Ed25519Signer",
    "EvidenceSource",
    "InvalidUri",
    "JweError",
    "KbsClientError",
    "KbsHttpError",
    "PolicyDenied",
    "ProtocolError",
    "ResourceClient",
    "ResourceNotFound",
    "ResourceUri",
    "SampleEvidenceSource",
    "TeeKeyError",
    "TeeKeyPair",
    "TeePubKey",
    "TokenError",
    "TokenProvider",
    "TransportError",
    "Unauthorized",
    "VersionMismatch",
    "attest",
    "get_resource",
    "sample_evidence",
]
