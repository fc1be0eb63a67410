"""Arm CCA: the attestation token (CBOR/COSE, via cbor2 and pycose):
platform token signed by the CPAK, realm token signed by the RAK, the RAK
bound into the platform challenge, the realm challenge bound to the session;
the configfs-tsm attester and ``coco-verify cca``."""

__all__: list[str] = []
