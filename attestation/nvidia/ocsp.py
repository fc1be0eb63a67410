"""OCSP status checks for NVIDIA certificate chains (optional; off unless asked for).

For each certificate (except the root, and except the device leaf, as NVIDIA's
verifier does) one request with a SHA-384 CertID and a fresh 32-byte nonce is
POSTed to the responder (default NVIDIA's). The response must be signed by
the issuer or by a responder certificate the issuer delegated (OCSPSigning),
echo the nonce, cover this serial, be current at ``now`` and say GOOD.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation._net import read_bounded
from attestation.errors import VerificationError

__all__ = ["DEFAULT_OCSP_URL", "MAX_OCSP_RESPONSE", "HttpOcspChecker"]

DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
MAX_OCSP_RESPONSE = 64 * 1024


def _verify_sig(
    signer: x509.Certificate, signature: bytes, data: bytes, algo: hashes.HashAlgorithm | None
) -> None:
    key = signer.public_key()
    if algo is None:
        raise VerificationError("OCSP response uses an unsupported signature algorithm")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algo))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algo)
        else:
            raise VerificationError("OCSP responder key type is not supported")
    except InvalidSignature as exc:
        raise VerificationError("OCSP response signature is invalid") from exc


@dataclass(frozen=True)
class HttpOcspChecker:
    """Checks certificates against an OCSP responder through an injected httpx client."""

    client: httpx.Client
    url: str = DEFAULT_OCSP_URL
    use_nonce: bool = True
    #: NVIDIA's verifier can tolerate "certificate hold"; off by default.
    allow_hold: bool = False

    def check(
        self, chain: Sequence[x509.Certificate], *, root: x509.Certificate, now: datetime, skip_leaf: bool
    ) -> None:
        certs = list(chain)
        if not certs or certs[-1] != root:
            certs.append(root)
        for i in range(1 if skip_leaf else 0, len(certs) - 1):
            self._check_one(certs[i], certs[i + 1], now)

    def _check_one(self, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
        nonce = os.urandom(32)
        if self.use_nonce:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        body = builder.build().public_bytes(Encoding.DER)
        content: bytes | None = b""
        try:
            with self.client.stream(
                "POST", self.url, content=body, headers={"Content-Type": "application/ocsp-request"}
            ) as resp:
                if resp.status_code != 200:
                    raise VerificationError(f"OCSP responder answered HTTP {resp.status_code}")
                content = read_bounded(resp, MAX_OCSP_RESPONSE)
                if content is None:
                    raise VerificationError("OCSP response is too large")
        except httpx.HTTPError as exc:
            raise VerificationError("OCSP responder unreachable") from exc
        try:
            answer = ocsp.load_der_ocsp_response(content or b"")
        except ValueError as exc:
            raise VerificationError("OCSP response is not DER") from exc
        if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise VerificationError(f"OCSP responder status {answer.response_status.name}")
        signer = issuer
        if answer.certificates:
            delegated = answer.certificates[0]
            if delegated != issuer:
                try:
                    delegated.verify_directly_issued_by(issuer)
                    eku = delegated.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as exc:
                    raise VerificationError(
                        "OCSP responder certificate is not delegated by the issuer"
                    ) from exc
                if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                    raise VerificationError("OCSP responder certificate lacks the OCSPSigning usage")
                if not delegated.not_valid_before_utc <= now <= delegated.not_valid_after_utc:
                    raise VerificationError("OCSP responder certificate is not valid now")
                signer = delegated
        _verify_sig(signer, answer.signature, answer.tbs_response_bytes, answer.signature_hash_algorithm)
        if self.use_nonce:
            try:
                got = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            except x509.ExtensionNotFound as exc:
                raise VerificationError("OCSP response does not echo the nonce") from exc
            if got != nonce:
                raise VerificationError("OCSP response nonce mismatch")
        if answer.serial_number != cert.serial_number:
            raise VerificationError("OCSP response is for another certificate")
        if answer.this_update_utc > now or (
            answer.next_update_utc is not None and answer.next_update_utc < now
        ):
            raise VerificationError("OCSP response is not current")
        status = answer.certificate_status
        if status == ocsp.OCSPCertStatus.GOOD:
            return
        if status == ocsp.OCSPCertStatus.REVOKED:
            reason = answer.revocation_reason
            if self.allow_hold and reason == x509.ReasonFlags.certificate_hold:
                return
            raise VerificationError("certificate is revoked")
        raise VerificationError("OCSP status of a certificate is unknown")
