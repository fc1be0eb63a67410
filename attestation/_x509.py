"""Small X.509 checks shared by the chain verifiers (NVIDIA, Intel PCK, TPM AK, IBM SE, KBS tokens)."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature

__all__ = ["is_ca", "issued_by"]


def is_ca(cert: x509.Certificate) -> bool:
    """May ``cert`` issue certificates: basicConstraints cA set and, when a key
    usage extension is present, keyCertSign in it (RFC 5280 §4.2.1.3, §4.2.1.9)."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Is ``cert`` signed by ``issuer``'s key, with ``issuer``'s subject as its issuer
    (validity periods and CA constraints are the caller's checks)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
