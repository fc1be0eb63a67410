"""The KBS protocol (RCAR 0.4.0) client side: TEE key pairs and JWE,
resource URIs, the attestation flow, the admin client and ``kbs-client``."""
