"""attestation._x509.is_ca: the issuer check every chain verifier uses."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation._x509 import is_ca

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _cert(ca: bool | None, cert_sign: bool | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=1))
    )  # fmt: skip
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if cert_sign is not None:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, cert_sign, cert_sign, False, False), critical=True
        )
    return b.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("ca", "cert_sign", "expected"),
    [(True, None, True), (True, True, True), (True, False, False), (False, True, False), (None, None, False)],
)
def test_is_ca(ca: bool | None, cert_sign: bool | None, expected: bool) -> None:
    assert is_ca(_cert(ca, cert_sign)) is expected
