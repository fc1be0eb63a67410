"""Cosign verification units: key types, Fulcio certificate rules (EKU, issuer extensions,
validity at the Rekor time), Rekor SET binding. Certificates come from a throwaway CA
(tests/image_pull/trust/helpers.py); containers/image's real vectors are in test_vectors.py."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from image_pull.trust.errors import InvalidPolicy, SignatureRejected
from image_pull.trust.signatures.cosign import (
    load_certificates,
    load_public_keys,
    verify_fulcio_certificate,
    verify_rekor_set,
    verify_with_key,
)
from image_pull.trust.signatures.payload import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, parse_payload
from tests.image_pull.trust.helpers import FakeFulcio, cosign_payload, ec_key, pub_pem, rekor_bundle

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
ISSUER = "https://accounts.example.com"


def test_key_types() -> None:
    payload = b"payload"
    e = ec_key()
    verify_with_key(e.public_key(), e.sign(payload, ec.ECDSA(hashes.SHA256())), payload)
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verify_with_key(r.public_key(), r.sign(payload, padding.PKCS1v15(), hashes.SHA256()), payload)
    ed = ed25519.Ed25519PrivateKey.generate()
    verify_with_key(ed.public_key(), ed.sign(payload), payload)
    with pytest.raises(SignatureRejected):
        verify_with_key(ed.public_key(), ed.sign(payload), payload + b"!")
    with pytest.raises(SignatureRejected):
        verify_with_key(e.public_key(), b"\x30\x00", payload)
    keys = load_public_keys(pub_pem(e) + pub_pem(r))
    assert len(keys) == 2
    with pytest.raises(InvalidPolicy):
        load_public_keys(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(InvalidPolicy):
        load_certificates(b"not pem")


def test_fulcio_rules() -> None:
    ca = FakeFulcio.create()
    signer = ec_key()
    cert = ca.issue(signer, "dev@example.com", ISSUER, T0)
    kw = {"ca": [ca.cert], "oidc_issuer": ISSUER, "subject_email": "dev@example.com"}
    key = verify_fulcio_certificate(cert, None, at=T0 + dt.timedelta(minutes=1), **kw)  # type: ignore[arg-type]
    assert key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SignatureRejected, match="not valid at signing time"):
        verify_fulcio_certificate(cert, None, at=T0 + dt.timedelta(hours=1), **kw)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match="not valid at signing time"):
        verify_fulcio_certificate(cert, None, at=T0 - dt.timedelta(seconds=1), **kw)  # type: ignore[arg-type]
    server = ca.issue(signer, "dev@example.com", ISSUER, T0, code_signing=False)
    with pytest.raises(SignatureRejected, match="codeSigning"):
        verify_fulcio_certificate(server, None, at=T0, **kw)  # type: ignore[arg-type]
    other_ca = FakeFulcio.create()
    with pytest.raises(SignatureRejected, match="does not chain"):
        verify_fulcio_certificate(cert, other_ca.pem, at=T0, **{**kw, "ca": [other_ca.cert]})  # type: ignore[arg-type]


def test_fulcio_issuer_extensions_must_agree() -> None:
    ca = FakeFulcio.create()
    signer = ec_key()
    bad = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(signer.public_key())
        .serial_number(5)
        .not_valid_before(T0)
        .not_valid_after(T0 + dt.timedelta(minutes=10))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("dev@example.com")]), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), b"https://a"),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), b"\x0c\x09https://b"),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(SignatureRejected, match="disagree"):
        verify_fulcio_certificate(
            bad, None, ca=[ca.cert], oidc_issuer="https://a", subject_email="dev@example.com", at=T0
        )


def test_rekor_set_binds_signature_key_and_payload() -> None:
    rekor, signer, other = ec_key(), ec_key(), ec_key()
    payload = cosign_payload("example.com/a", "sha256:" + "a" * 64)
    sig = signer.sign(payload, ec.ECDSA(hashes.SHA256()))
    bundle = rekor_bundle(rekor, sig, payload, pub_pem(signer), 1750000000)
    entry = verify_rekor_set(
        bundle, [rekor.public_key()], signature=sig, payload=payload, signer_key=signer.public_key()
    )
    assert entry.integrated_time == 1750000000
    with pytest.raises(SignatureRejected, match="another public key"):
        verify_rekor_set(
            bundle, [rekor.public_key()], signature=sig, payload=payload, signer_key=other.public_key()
        )
    with pytest.raises(SignatureRejected, match="another signature"):
        verify_rekor_set(
            bundle,
            [rekor.public_key()],
            signature=sig[:-1] + bytes([sig[-1] ^ 1]),  # always differs from sig
            payload=payload,
            signer_key=signer.public_key(),
        )
    with pytest.raises(SignatureRejected, match="another payload hash"):
        verify_rekor_set(
            bundle,
            [rekor.public_key()],
            signature=sig,
            payload=payload + b" ",
            signer_key=signer.public_key(),
        )
    with pytest.raises(SignatureRejected, match="trusted Rekor key"):
        verify_rekor_set(
            bundle, [other.public_key()], signature=sig, payload=payload, signer_key=signer.public_key()
        )
    with pytest.raises(SignatureRejected, match="unexpected members"):
        verify_rekor_set(b'{"Payload": {}}', [rekor.public_key()], signature=sig, payload=payload)
    # a second SignedEntryTimestamp member must not be silently chosen between (strict JSON)
    doubled = bundle.replace(
        b'"SignedEntryTimestamp"', b'"SignedEntryTimestamp": "AA==", "SignedEntryTimestamp"', 1
    )
    assert doubled != bundle
    with pytest.raises(SignatureRejected, match="not valid JSON"):
        verify_rekor_set(
            doubled, [rekor.public_key()], signature=sig, payload=payload, signer_key=signer.public_key()
        )


@pytest.mark.parametrize(
    "raw,match",
    [
        (
            b'{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:a"},'
            b'"identity":{"docker-reference":"a"},"extra":1},"optional":{}}',
            "exactly",
        ),
        (
            b'{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:a"},'
            b'"identity":{"docker-reference":"a"}}}',
            "optional",
        ),
        (
            b'{"critical":{"type":"cosign container image signature","image":{"docker-manifest-digest":"sha256:a"},'
            b'"identity":{"docker-reference":"a"}},"optional":{}}',
            "type is not",
        ),
        (
            b'{"critical":{"type":"atomic container signature","type":"atomic container signature"}}',
            "duplicate",
        ),
        (
            b'{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:a"},'
            b'"identity":{"docker-reference":"a"}},"optional":{"timestamp":"now"}}',
            "timestamp",
        ),
    ],
)
def test_simple_signing_payload_strictness(raw: bytes, match: str) -> None:
    with pytest.raises(SignatureRejected, match=match):
        parse_payload(raw, expected_type=SIMPLE_SIGNING_TYPE)


def test_cosign_payload_optional_may_be_null_or_anything() -> None:
    p = parse_payload(cosign_payload("example.com/a", "sha256:" + "a" * 64, None), expected_type=COSIGN_TYPE)
    assert p.docker_reference == "example.com/a"
    p = parse_payload(
        cosign_payload("example.com/a", "sha256:" + "a" * 64, {"anno": {"x": 1}}), expected_type=COSIGN_TYPE
    )
    assert p.creator is None
