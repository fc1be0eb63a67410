"""Verify a TPM 2.0 quote: the AK's signature over the ``TPMS_ATTEST``, the
PCR values against the quote's ``pcrDigest``, and the nonce in ``extraData``.

Evidence carries the PCR values next to the signed message (as guest-components
and the Azure vTPM tooling send them); only their digest is signed, so
:func:`check_pcrs` is what makes the values trustworthy.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.tpm.errors import QuoteSignatureInvalid, TpmFormatError, TpmVerificationError
from attestation.tpm.structures import (
    ALG_ECDSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    ALG_SHA512,
    Attest,
    Signature,
)

__all__ = [
    "INIT_DATA_PCR",
    "check_nonce",
    "check_pcrs",
    "init_data_pcr_value",
    "verify_signature",
]

#: guest-components extends the init-data digest into this PCR (trustee checks it)
INIT_DATA_PCR = 8

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    ALG_SHA1: hashes.SHA1,
    ALG_SHA256: hashes.SHA256,
    ALG_SHA384: hashes.SHA384,
    ALG_SHA512: hashes.SHA512,
}


def verify_signature(
    message: bytes,
    signature: Signature | bytes,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
) -> None:
    """Check the AK's signature over ``message`` (the marshalled ``TPMS_ATTEST``).

    ``signature`` is a parsed ``TPMT_SIGNATURE`` or, as the Azure vTPM
    evidence carries it, the bare RSASSA-PKCS1-v1_5/SHA-256 signature bytes."""
    try:
        if isinstance(signature, bytes):
            if not isinstance(key, rsa.RSAPublicKey):
                raise QuoteSignatureInvalid("a bare quote signature needs an RSA attestation key")
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            return
        h = _HASHES.get(signature.hash_alg)
        if h is None:
            raise TpmFormatError(f"unsupported signature hash {signature.hash_alg:#x}")
        if signature.sig_alg in (ALG_RSASSA, ALG_RSAPSS):
            if not isinstance(key, rsa.RSAPublicKey):
                raise QuoteSignatureInvalid("RSA signature but the attestation key is not RSA")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if signature.sig_alg == ALG_RSASSA
                else padding.PSS(mgf=padding.MGF1(h()), salt_length=padding.PSS.AUTO)
            )
            key.verify(signature.value, message, pad, h())
        elif signature.sig_alg == ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise QuoteSignatureInvalid("ECDSA signature but the attestation key is not ECC")
            der = encode_dss_signature(int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big"))
            key.verify(der, message, ec.ECDSA(h()))
        else:
            raise TpmFormatError(f"unsupported signature algorithm {signature.sig_alg:#x}")
    except InvalidSignature as exc:
        raise QuoteSignatureInvalid("TPM quote is not signed by the attestation key") from exc


def check_pcrs(attest: Attest, pcrs: list[bytes]) -> dict[int, bytes]:
    """``{index: value}`` of the SHA-256 PCRs in ``pcrs`` once their digest
    equals the quote's ``pcrDigest``; the list is in selection order."""
    if len(attest.pcr_select) != 1 or attest.pcr_select[0].hash_alg != ALG_SHA256:
        raise TpmVerificationError("the quote must select exactly one PCR bank, SHA-256")
    indices = attest.pcr_select[0].indices
    if len(pcrs) != len(indices):
        raise TpmVerificationError(
            f"quote selects {len(indices)} PCRs but the evidence has {len(pcrs)} values"
        )
    if any(len(p) != 32 for p in pcrs):
        raise TpmFormatError("every SHA-256 PCR value must be 32 bytes")
    digest = hashlib.sha256(b"".join(pcrs)).digest()
    if not hmac.compare_digest(digest, attest.pcr_digest):
        raise TpmVerificationError("PCR values do not match the digest in the quote")
    return dict(zip(indices, pcrs, strict=True))


def check_nonce(attest: Attest, expected: bytes) -> None:
    if not hmac.compare_digest(attest.extra_data, expected):
        raise TpmVerificationError("TPM quote nonce (extraData) does not match the expected report data")


def init_data_pcr_value(init_data_hash: bytes) -> bytes:
    """PCR 8 after one extend with ``init_data_hash`` from reset: SHA-256(0^32 || digest)."""
    if len(init_data_hash) != 32:
        raise TpmVerificationError("the init-data digest must be SHA-256 to be bound to a TPM PCR")
    return hashlib.sha256(bytes(32) + init_data_hash).digest()
