"""TPM 2.0: quote structures and verification (shared by ``tpm``,
``az-snp-vtpm`` and ``az-tdx-vtpm``), a TPM command client for
``/dev/tpmrm0`` or a swtpm socket, the ``tpm`` attester and verifier, and
``coco-verify tpm``."""

__all__: list[str] = []
