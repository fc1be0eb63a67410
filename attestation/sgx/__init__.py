"""Intel SGX (DCAP quote v3): verification on the shared DCAP quote machinery
of :mod:`attestation.tdx`, trustee-shaped claims, the Gramine attester and
``coco-verify sgx``."""

__all__: list[str] = []
