"""trustee v0.21 gRPC APIs: attestation-service and RVPS (generated, see MANIFEST)."""
