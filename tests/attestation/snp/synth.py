"""A synthetic AMD-shaped PKI and report signer, for tests only.

Real AMD keys are of course unavailable, so cases that need a *validly signed*
report with particular contents (Turin v5 layout, debug policy, TCB or hwID
disagreeing with the VCEK, expired intermediates) are built here: an ARK/ASK/
ASVK hierarchy with the same names, algorithms (RSASSA-PSS/SHA-384, ECDSA
P-384 leaf) and AMD extensions as the real one. It is passed to the verifier
as explicit trust material; the built-in roots never trust it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.snp.certs import EndorsementCert, ProductRoots, TrustStore
from attestation.snp.report import REPORT_SIZE, Product, TcbVersion

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T_END = datetime(2040, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)

CPUID = {
    Product.MILAN: (0x19, 0x01, 0x01),
    Product.GENOA: (0x19, 0xA0, 0x02),
    Product.TURIN: (0x1A, 0x02, 0x01),
}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synthetic Test Devices (not AMD)"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(subject: str, issuer: str, pub, signer, *, nb=T0, na=T_END, exts=()):
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
    )
    for oid, value in exts:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return b.sign(signer, hashes.SHA384(), rsa_padding=PSS)


def der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def der_octets(b: bytes) -> bytes:
    return bytes([0x04, len(b)]) + b


def der_ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


AMD = "1.3.6.1.4.1.3704.1"


@dataclass
class SynthPki:
    product: Product
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    asvk_key: rsa.RSAPrivateKey
    roots: ProductRoots
    _vceks: dict = field(default_factory=dict)

    @classmethod
    def create(cls, product: Product, *, ask_not_after: datetime = T_END) -> SynthPki:
        n = product.value
        ark_key = rsa.generate_private_key(65537, 2048)
        ask_key = rsa.generate_private_key(65537, 2048)
        asvk_key = rsa.generate_private_key(65537, 2048)
        ark = _cert(f"ARK-{n}", f"ARK-{n}", ark_key.public_key(), ark_key)
        ask = _cert(f"SEV-{n}", f"ARK-{n}", ask_key.public_key(), ark_key, na=ask_not_after)
        asvk = _cert(f"SEV-VLEK-{n}", f"ARK-{n}", asvk_key.public_key(), ark_key)
        return cls(product, ark_key, ask_key, asvk_key, ProductRoots(product, ark, ask, asvk))

    def crl(
        self,
        revoked: list[int] = (),
        *,
        last: datetime = T0,
        next_: datetime = T_END,
        signer=None,  # type: ignore[assignment]
    ) -> bytes:
        """A DER CRL issued by this ARK (RSA-PSS/SHA-384), as AMD KDS serves them."""
        b = x509.CertificateRevocationListBuilder().issuer_name(self.roots.ark.subject)
        b = b.last_update(last).next_update(next_)
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
            )
        crl = b.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def trust(self) -> TrustStore:
        return TrustStore({self.product: self.roots})

    def roots_pem(self) -> bytes:
        r = self.roots
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (r.ask, r.ark, r.asvk))

    def leaf(
        self,
        *,
        vlek: bool = False,
        tcb: TcbVersion,
        hwid: bytes | None = None,
        product_name: str | None = None,
        nb: datetime = T0,
        na: datetime = T_END,
        raw_hwid: bool = False,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        key = key or ec.generate_private_key(ec.SECP384R1())
        n = self.product.value
        exts = [
            (f"{AMD}.1", der_int(1 if self.product is Product.TURIN else 0)),
            (f"{AMD}.2", der_ia5(product_name or (n if self.product is not Product.MILAN else "Milan-B0"))),
            (f"{AMD}.3.1", der_int(tcb.bootloader)),
            (f"{AMD}.3.2", der_int(tcb.tee)),
            (f"{AMD}.3.3", der_int(tcb.snp)),
            (f"{AMD}.3.8", der_int(tcb.microcode)),
        ]
        if tcb.fmc is not None:
            exts.append((f"{AMD}.3.9", der_int(tcb.fmc)))
        if vlek:
            exts.append((f"{AMD}.5", der_ia5("CN=synthetic-csp.example")))
        elif hwid is not None:
            exts.append((f"{AMD}.4", hwid if raw_hwid else der_octets(hwid)))
        signer = self.asvk_key if vlek else self.ask_key
        issuer = f"SEV-VLEK-{n}" if vlek else f"SEV-{n}"
        cert = _cert(
            "SEV-VLEK" if vlek else "SEV-VCEK", issuer, key.public_key(), signer, nb=nb, na=na, exts=exts
        )
        return key, cert.public_bytes(serialization.Encoding.DER)


def build_report(
    *,
    version: int = 3,
    product: Product | None = Product.MILAN,
    policy: int = 0x30000,
    vmpl: int = 0,
    signing_key: int = 0,
    report_data: bytes = b"\x11" * 64,
    measurement: bytes = b"\x22" * 48,
    host_data: bytes = b"\x33" * 32,
    chip_id: bytes = bytes(range(64)),
    tcb: TcbVersion | None = None,
    guest_svn: int = 1,
    fw: tuple[int, int, int] = (1, 55, 40),
    mit: tuple[int, int] = (11, 11),
) -> bytes:
    """Unsigned report bytes with every field set (signature zero)."""
    turin = product is Product.TURIN
    if tcb is None:
        tcb = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115, fmc=1 if turin else None)
    if turin:
        chip_id = chip_id[:8] + b"\0" * 56
    b = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", b, 0, version, guest_svn, policy)
    b[0x10:0x20] = b"\x01" * 16
    b[0x20:0x30] = b"\x02" * 16
    struct.pack_into("<II", b, 0x30, vmpl, 1)
    b[0x38:0x40] = tcb.raw
    struct.pack_into("<QI", b, 0x40, 0x25, signing_key << 2)
    b[0x50:0x90] = report_data
    b[0x90:0xC0] = measurement
    b[0xC0:0xE0] = host_data
    b[0x160:0x180] = b"\xff" * 32
    b[0x180:0x188] = tcb.raw
    if version >= 3 and product is not None:
        b[0x188:0x18B] = bytes(CPUID[product])
    b[0x1A0:0x1E0] = chip_id
    b[0x1E0:0x1E8] = tcb.raw
    b[0x1E8:0x1EB] = bytes([fw[2], fw[1], fw[0]])
    b[0x1EC:0x1EF] = bytes([fw[2], fw[1], fw[0]])
    b[0x1F0:0x1F8] = tcb.raw
    if version >= 5:
        struct.pack_into("<QQ", b, 0x1F8, *mit)
    return bytes(b)


def sign(unsigned: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    der = key.sign(unsigned[:0x2A0], ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    b = bytearray(unsigned)
    b[0x2A0:0x2E8] = r.to_bytes(72, "little")
    b[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(b)


def endorsement(der: bytes) -> EndorsementCert:
    return EndorsementCert.from_bytes(der)


__all__ = ["NOW", "T0", "T_END", "SynthPki", "build_report", "der_int", "endorsement", "sign", "timedelta"]
