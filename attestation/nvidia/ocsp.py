"""OCSP for NVIDIA certificate chains: the request for one certificate and the
check of the responder's answer (fetching lives in
:class:`attestation.nvidia.endorsements.HttpOcspChecker`; off unless asked for).

A request carries a SHA-384 CertID and (by default) a fresh 32-byte nonce. The
response must be signed by the issuer or by a responder certificate the issuer
delegated (OCSPSigning), echo the nonce, cover this serial, be current at
``now`` and say GOOD.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation.nvidia.errors import NvidiaVerificationError

__all__ = ["MAX_OCSP_RESPONSE", "check_ocsp_response", "ocsp_request"]

MAX_OCSP_RESPONSE = 64 * 1024


def _verify_sig(
    signer: x509.Certificate, signature: bytes, data: bytes, algo: hashes.HashAlgorithm | None
) -> None:
    key = signer.public_key()
    if algo is None:
        raise NvidiaVerificationError("OCSP response uses an unsupported signature algorithm")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algo))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algo)
        else:
            raise NvidiaVerificationError("OCSP responder key type is not supported")
    except InvalidSignature as exc:
        raise NvidiaVerificationError("OCSP response signature is invalid") from exc


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    """The DER OCSP request for ``cert`` (SHA-384 CertID), with ``nonce`` when given."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def check_ocsp_response(
    content: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    now: datetime,
    allow_hold: bool = False,
) -> None:
    """Accept an untrusted DER OCSP response only if it says ``cert`` is GOOD
    (or on hold, with ``allow_hold``) at ``now``, is signed by ``issuer`` or its
    delegated responder, and echoes ``nonce`` when one was sent; raise
    NvidiaVerificationError otherwise."""
    try:
        answer = ocsp.load_der_ocsp_response(content)
    except ValueError as exc:
        raise NvidiaVerificationError("OCSP response is not DER") from exc
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise NvidiaVerificationError(f"OCSP responder status {answer.response_status.name}")
    signer = issuer
    if answer.certificates:
        delegated = answer.certificates[0]
        if delegated != issuer:
            try:
                delegated.verify_directly_issued_by(issuer)
                eku = delegated.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as exc:
                raise NvidiaVerificationError(
                    "OCSP responder certificate is not delegated by the issuer"
                ) from exc
            if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                raise NvidiaVerificationError("OCSP responder certificate lacks the OCSPSigning usage")
            if not delegated.not_valid_before_utc <= now <= delegated.not_valid_after_utc:
                raise NvidiaVerificationError("OCSP responder certificate is not valid now")
            signer = delegated
    _verify_sig(signer, answer.signature, answer.tbs_response_bytes, answer.signature_hash_algorithm)
    if nonce is not None:
        try:
            got = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound as exc:
            raise NvidiaVerificationError("OCSP response does not echo the nonce") from exc
        if got != nonce:
            raise NvidiaVerificationError("OCSP response nonce mismatch")
    if answer.serial_number != cert.serial_number:
        raise NvidiaVerificationError("OCSP response is for another certificate")
    if answer.this_update_utc > now or (answer.next_update_utc is not None and answer.next_update_utc < now):
        raise NvidiaVerificationError("OCSP response is not current")
    status = answer.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = answer.revocation_reason
        if allow_hold and reason == x509.ReasonFlags.certificate_hold:
            return
        raise NvidiaVerificationError("certificate is revoked")
    raise NvidiaVerificationError("OCSP status of a certificate is unknown")
