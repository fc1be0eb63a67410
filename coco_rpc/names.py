"""Upstream socket paths and service names (compatibility surface)."""

from __future__ import annotations

__all__ = [
    "AA_GRPC_ADDRESS",
    "AA_SERVICE",
    "AA_SOCKET",
    "CDH_GRPC_ADDRESS",
    "CDH_SOCKET",
    "GET_RESOURCE_SERVICE",
    "IMAGE_PULL_SERVICE",
    "KEY_PROVIDER_SERVICE",
    "SEALED_SECRET_SERVICE",
    "SECURE_MOUNT_SERVICE",
]

AA_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
CDH_SOCKET = "unix:///run/confidential-containers/cdh.sock"
AA_GRPC_ADDRESS = "127.0.0.1:50002"
CDH_GRPC_ADDRESS = "127.0.0.1:50000"

AA_SERVICE = "attestation_agent.AttestationAgentService"
SEALED_SECRET_SERVICE = "api.SealedSecretService"
GET_RESOURCE_SERVICE = "api.GetResourceService"
SECURE_MOUNT_SERVICE = "api.SecureMountService"
IMAGE_PULL_SERVICE = "api.ImagePullService"
KEY_PROVIDER_SERVICE = "keyprovider.KeyProviderService"
