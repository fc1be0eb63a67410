"""SE endorsements: the host-key documents (X.509 certificates with the IBM Z
hosts' P-521 keys) the challenge is encrypted to, checked against IBM's
host-key signing certificate and its CAs when those are configured (trustee's
``SE_SKIP_CERTS_VERIFICATION`` otherwise, with a WARNING). CRLs are not
evaluated."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from attestation._x509 import issued_by

__all__ = ["host_keys", "load_host_key_document"]

log = logging.getLogger(__name__)


def load_host_key_document(data: bytes) -> x509.Certificate:
    """A host-key document (PEM or DER); ValueError when it is not a certificate."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError("host-key document is not an X.509 certificate") from exc


def host_keys(
    docs: Sequence[x509.Certificate],
    *,
    signer: x509.Certificate | None,
    cas: Sequence[x509.Certificate],
    at: datetime,
) -> list[ec.EllipticCurvePublicKey]:
    """The P-521 host keys of ``docs``, each document signed by ``signer`` and
    valid ``at`` (and ``signer`` issued by one of ``cas`` when any are given);
    ``signer=None`` trusts the documents as configured, loudly. ValueError on a
    configuration that does not hold."""
    if not docs:
        raise ValueError("at least one host-key document is needed")
    if signer is not None:
        if cas and not any(issued_by(signer, ca) for ca in cas):
            raise ValueError("the host-key signing certificate does not chain to a configured CA")
        for d in docs:
            if not issued_by(d, signer):
                raise ValueError("a host-key document is not signed by the host-key signing certificate")
            if not d.not_valid_before_utc <= at <= d.not_valid_after_utc:
                raise ValueError("a host-key document is outside its validity period")
    else:
        log.warning("SE host-key documents are NOT verified (no hkd_signing_cert configured)")
    keys: list[ec.EllipticCurvePublicKey] = []
    for d in docs:
        k = d.public_key()
        if not isinstance(k, ec.EllipticCurvePublicKey) or not isinstance(k.curve, ec.SECP521R1):
            raise ValueError("host-key documents must carry P-521 keys")
        keys.append(k)
    return keys
