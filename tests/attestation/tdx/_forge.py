"""Negative-vector generator: re-sign real TDX quotes under a test PKI.

Builds a throwaway "Intel SGX Root CA" look-alike, a PCK Platform CA and a PCK
leaf that carries the real leaf's SGX extension, then rewrites a real quote
(optionally with edited body fields, QE report data, attestation key) and
signs the QE report and quote consistently. Used for cases that real vectors
cannot provide: a chain to a different root, a broken QE binding with every
signature valid, quotes whose RTMRs match a given event log, revoked PCKs.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from attestation.tdx.pck import SGX_EXTENSION_OID, load_pem_chain
from attestation.tdx.quote import Quote

NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _cert(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: x509.ExtensionType | None = None,
    not_after: datetime = NOT_AFTER,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extra is not None:
        b = b.add_extension(extra, critical=False)
    return b.sign(signer, hashes.SHA256())


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class TestPki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.leaf, self.inter, self.root))

    def crl(self, revoked_serials: list[int], *, by_root: bool = False) -> x509.CertificateRevocationList:
        issuer, key = (self.root, self.root_key) if by_root else (self.inter, self.inter_key)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(NOT_BEFORE)
            .next_update(NOT_AFTER)
        )
        for s in revoked_serials:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOT_BEFORE).build()
            )
        return b.sign(key, hashes.SHA256())


def make_pki(real_quote: bytes, *, leaf_not_after: datetime = NOT_AFTER) -> TestPki:
    real_leaf = load_pem_chain(
        Quote.from_bytes(real_quote).signature_data.certification_data.pck_chain_pem(), "x"
    )[0]
    ext = real_leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Intel SGX Root CA", "Intel SGX Root CA", root_key, root_key, ca=True)
    inter = _cert("Intel SGX PCK Platform CA", "Intel SGX Root CA", inter_key, root_key, ca=True)
    leaf = _cert(
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        leaf_key,
        inter_key,
        ca=False,
        extra=ext,
        not_after=leaf_not_after,
    )
    return TestPki(root, root_key, inter, inter_key, leaf, leaf_key)


def forge_quote(
    real_quote: bytes,
    pki: TestPki,
    *,
    body_patch: dict[int, bytes] | None = None,
    qe_report_data: bytes | None = None,
) -> bytes:
    """Re-sign ``real_quote`` (v4 or v5) under ``pki`` with a fresh attestation key.

    ``body_patch`` maps offsets *within the TD report body* to replacement bytes.
    ``qe_report_data`` overrides the (otherwise correct) QE binding."""
    q = Quote.from_bytes(real_quote)
    sd = q.signature_data
    att_key = ec.generate_private_key(ec.SECP256R1())
    att_pub = att_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    body_off = 54 if q.header.version == 5 else 48
    signed = bytearray(q.signed_bytes)
    for off, val in (body_patch or {}).items():
        signed[body_off + off : body_off + off + len(val)] = val
    qe = bytearray(sd.qe_report.raw)
    qe[320:384] = (
        qe_report_data
        if qe_report_data is not None
        else hashlib.sha256(att_pub + sd.qe_auth_data).digest() + bytes(32)
    )
    chain = pki.chain_pem() + b"\x00"
    cert_data = struct.pack("<HI", 5, len(chain)) + chain
    qe_cert = bytes(qe) + raw_sign(pki.leaf_key, bytes(qe)) + struct.pack("<H", len(sd.qe_auth_data))
    qe_cert += sd.qe_auth_data + cert_data
    sig_data = raw_sign(att_key, bytes(signed)) + att_pub + struct.pack("<HI", 6, len(qe_cert)) + qe_cert
    return bytes(signed) + struct.pack("<I", len(sig_data)) + sig_data


LATER = NOT_BEFORE + timedelta(days=365 * 5)
