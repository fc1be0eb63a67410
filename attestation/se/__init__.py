"""IBM Secure Execution (s390x): the attestation request control block
(ARCB) a KBS sends as its ``/auth`` challenge, the SE-header tags, and the
verification of the guest's attestation response (HMAC-SHA512 measurement by
the Ultravisor); as trustee's ``se`` verifier."""

__all__: list[str] = []
