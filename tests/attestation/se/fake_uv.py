"""A software stand-in for the IBM Z Ultravisor's attestation call (there is
no s390x Secure Execution hardware here), plus generated host-key material.

It does what the Ultravisor does with an ARCB: find the key slot for its host
key, unwrap the request-protection key (ECDH P-521), decrypt the measurement
key and nonce (AES-256-GCM, the ARCB prefix as AAD, so any edit to the request
fails), and compute the measurement over the SE-header tags, the
configuration UID, the guest's user data, the nonce and the additional data
(image and attestation host-key hashes). It then shapes the guest's
``SeAttestationResponse`` as guest-components does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from attestation.se.arcb import ec_coords, measurement

SE = Path(__file__).resolve().parents[2] / "fixtures" / "evidence" / "se"


def _cert(cn: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return b.sign(issuer_key, hashes.SHA512())


@dataclass
class SeTestPki:
    """Generated stand-ins for IBM's keys (the real ones cannot be had)."""

    dir: Path
    host_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, d: Path) -> SeTestPki:
        d.mkdir(parents=True, exist_ok=True)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca = _cert("Test Root CA", ca_key, None, ca_key, True)
        sign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = _cert("Test IBM Z Host Key Signing Service", sign_key, ca, ca_key, True)
        host = ec.generate_private_key(ec.SECP521R1())
        hkd = _cert("Test Host Key Document", host, signer, sign_key, False)
        other_host = ec.generate_private_key(ec.SECP521R1())
        stray = _cert("Unsigned HKD", other_host, None, other_host, False)
        meas = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = serialization.Encoding.PEM
        (d / "ca.crt").write_bytes(ca.public_bytes(pem))
        (d / "signing.crt").write_bytes(signer.public_bytes(pem))
        (d / "hkd.crt").write_bytes(hkd.public_bytes(pem))
        (d / "stray-hkd.crt").write_bytes(stray.public_bytes(pem))
        (d / "encrypt_key.pem").write_bytes(
            meas.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (d / "hdr.bin").write_bytes((SE / "secure_guest.hdr").read_bytes())
        return cls(d, host)

    def options(self) -> dict[str, Any]:
        return {
            "measurement_key_private": str(self.dir / "encrypt_key.pem"),
            "host_key_documents": [str(self.dir / "hkd.crt")],
            "se_image_header": str(self.dir / "hdr.bin"),
            "hkd_signing_cert": str(self.dir / "signing.crt"),
            "hkd_ca_certs": [str(self.dir / "ca.crt")],
        }


def uv_attest(
    arcb: bytes, host_key: ec.EllipticCurvePrivateKey, tags: bytes, cuid: bytes, user_data: bytes
) -> tuple[bytes, bytes]:
    """(measurement, additional data) as the Ultravisor would return them."""
    nks = arcb[39]
    sea = struct.unpack_from(">I", arcb, 44)[0]
    iv = arcb[16:28]
    cust = arcb[64:224]
    peer = ec.EllipticCurvePublicNumbers(
        int.from_bytes(cust[:80], "big"), int.from_bytes(cust[80:], "big"), ec.SECP521R1()
    ).public_key()
    phkh = hashlib.sha256(ec_coords(host_key.public_key())).digest()
    derived = hashlib.sha256(host_key.exchange(ec.ECDH(), peer) + b"\x00\x00\x00\x01").digest()
    prot = None
    for i in range(nks):
        slot = arcb[224 + 80 * i : 304 + 80 * i]
        if slot[:32] == phkh:
            prot = AESGCM(derived).decrypt(bytes(12), slot[32:], b"")
    if prot is None:
        raise ValueError("no key slot for this host key")
    prefix = 224 + 80 * nks
    conf = AESGCM(prot).decrypt(iv, arcb[prefix : prefix + sea + 16], arcb[:prefix])
    mkey, nonce = conf[:64], conf[64:80]
    additional = phkh + phkh
    return measurement(mkey, tags, cuid, user_data, nonce, additional), additional


def guest_response(
    challenge: str, host_key: ec.EllipticCurvePrivateKey, report_data: bytes
) -> dict[str, str]:
    """What an SE guest sends as evidence for ``challenge`` (the /auth nonce)."""
    req = json.loads(challenge)
    arcb = base64.b64decode(req["request_blob"])
    tags = base64.b64decode(req["image_hdr_tags"])
    cuid = os.urandom(16)
    user_data = report_data.ljust(64, b"\x00")
    meas, additional = uv_attest(arcb, host_key, tags, cuid, user_data)
    b64 = base64.b64encode
    return {
        "measurement": b64(meas).decode(),
        "additional_data": b64(additional).decode(),
        "user_data": b64(user_data).decode(),
        "cuid": b64(cuid).decode(),
        "encr_measurement_key": req["encr_measurement_key"],
        "encr_request_nonce": req["encr_request_nonce"],
        "image_hdr_tags": req["image_hdr_tags"],
    }


class SoftwareUv:
    """The attester's UV device seam served by :func:`uv_attest` (no /dev/uv here)."""

    def __init__(self, host_key: ec.EllipticCurvePrivateKey, tags: bytes) -> None:
        self.host_key = host_key
        self.tags = tags
        self.calls: list[tuple[int, int, bytes]] = []

    def attest(
        self, arcb: bytes, user_data: bytes, measurement_size: int, additional_size: int
    ) -> tuple[bytes, bytes, bytes]:
        self.calls.append((measurement_size, additional_size, user_data))
        cuid = os.urandom(16)
        meas, additional = uv_attest(arcb, self.host_key, self.tags, cuid, user_data)
        assert len(meas) == measurement_size and len(additional) == additional_size
        return meas, additional, cuid
