"""AMD certificates: pinned ARK/ASK/ASVK roots and VCEK/VLEK extension parsing.

Chain shapes (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
Interface Specification", pub. 57230, and "Versioned Loaded Endorsement Key (VLEK)
Certificate Definition", pub. 58369)::

    ARK-<Product> (self-signed, RSA-4096, RSASSA-PSS/SHA-384)
      ├── SEV-<Product>       (ASK)  ── SEV-VCEK (ECDSA P-384 key, signed with PSS by the ASK)
      └── SEV-VLEK-<Product>  (ASVK) ── SEV-VLEK

The built-in roots are in ``roots/<product>_ask_ark_asvk.pem`` (ASK, ARK,
ASVK in that order), copied byte for byte from trustee
``deps/verifier/src/snp/`` @ 78962cd4 (identical DER to go-sev-guest
``verify/trust`` and virtee/sev ``certs/snp/builtin``; see ``roots/README.md``).

A :class:`TrustStore` holds the roots of each product plus a cache of
certificate signatures already checked, so repeated verifications of reports
signed by the same VCEK cost one ECDSA verification each.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from attestation.snp.errors import (
    CertChainInvalid,
    CertificateExpired,
    CertificateFormatError,
)
from attestation.snp.report import Product, SigningKey

__all__ = [
    "MAX_CERT_FILE",
    "EndorsementCert",
    "ProductRoots",
    "RevocationList",
    "TrustStore",
    "check_validity",
    "load_certificate",
    "load_certificates",
]

#: Upper bound for a certificate file (PEM bundle) read from disk.
MAX_CERT_FILE = 64 * 1024

_AMD_OID = "1.3.6.1.4.1.3704.1"
_OID_STRUCT_VERSION = _AMD_OID + ".1"
_OID_PRODUCT_NAME = _AMD_OID + ".2"
_OID_BL_SPL = _AMD_OID + ".3.1"
_OID_TEE_SPL = _AMD_OID + ".3.2"
_OID_SNP_SPL = _AMD_OID + ".3.3"
_OID_UCODE_SPL = _AMD_OID + ".3.8"
_OID_FMC_SPL = _AMD_OID + ".3.9"
_OID_HWID = _AMD_OID + ".4"
_OID_CSP_ID = _AMD_OID + ".5"


# ---- minimal DER reading for the AMD extension values ----------------------------------


def _der_tlv(data: bytes, tag: int) -> bytes:
    """Content of a single DER TLV with ``tag`` spanning all of ``data``."""
    if len(data) < 2 or data[0] != tag:
        raise CertificateFormatError(f"expected DER tag {tag:#04x}")
    n = data[1]
    off = 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 2 or len(data) < 2 + k:
            raise CertificateFormatError("unsupported DER length")
        n = int.from_bytes(data[2 : 2 + k], "big")
        off = 2 + k
    if off + n != len(data):
        raise CertificateFormatError("DER length does not match the extension value")
    return data[off:]


def _der_uint(data: bytes) -> int:
    content = _der_tlv(data, 0x02)
    if not content or content[0] & 0x80:
        raise CertificateFormatError("AMD SPL extension is not a non-negative INTEGER")
    return int.from_bytes(content, "big")


def load_certificate(untrusted: bytes) -> x509.Certificate:
    """A certificate from DER or PEM bytes."""
    if len(untrusted) > MAX_CERT_FILE:
        raise CertificateFormatError("certificate file is too large")
    try:
        with warnings.catch_warnings():
            # AMD's Turin VCEKs carry a non-positive serial number; cryptography warns about it.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if untrusted.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(untrusted)
            return x509.load_der_x509_certificate(untrusted)
    except ValueError as exc:
        raise CertificateFormatError("not a DER or PEM X.509 certificate") from exc


def load_certificates(untrusted_pem: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, in file order."""
    if len(untrusted_pem) > MAX_CERT_FILE:
        raise CertificateFormatError("certificate bundle is too large")
    try:
        return x509.load_pem_x509_certificates(untrusted_pem)
    except ValueError as exc:
        raise CertificateFormatError("not a PEM certificate bundle") from exc


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise CertificateFormatError("certificate must have exactly one subject CN")
    v = attrs[0].value
    return v if isinstance(v, str) else v.decode("utf-8", "replace")


@functools.lru_cache(maxsize=1024)
def _fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    """Raise :class:`CertificateExpired` unless ``not_before <= now <= not_after``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{what} expired on {cert.not_valid_after_utc.isoformat()} "
            "(verify 'as of' an earlier time to accept it)"
        )


def _verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise :class:`InvalidSignature` unless ``issuer``'s key signed ``cert``."""
    if cert.issuer != issuer.subject:
        raise InvalidSignature("issuer name does not match")
    key = issuer.public_key()
    h = cert.signature_hash_algorithm
    if h is None:
        raise InvalidSignature("certificate has no signature hash algorithm")
    if isinstance(key, rsa.RSAPublicKey):
        pad = cert.signature_algorithm_parameters
        if not isinstance(pad, padding.PSS | padding.PKCS1v15):
            raise InvalidSignature("unexpected RSA signature parameters")
        key.verify(cert.signature, cert.tbs_certificate_bytes, pad, h)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(h))
    else:
        raise InvalidSignature("unsupported issuer key type")


@dataclass(frozen=True)
class ProductRoots:
    """The pinned ARK, ASK and ASVK of one product."""

    product: Product
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None

    @classmethod
    def from_pem(cls, product: Product, pem: bytes) -> ProductRoots:
        """Parse an ``ASK, ARK[, ASVK]`` bundle (trustee/KDS order); checks the
        names and that the ARK is self-signed and signs the ASK/ASVK."""
        certs = load_certificates(pem)
        by_cn = {_common_name(c): c for c in certs}
        name = product.value
        try:
            ark, ask = by_cn[f"ARK-{name}"], by_cn[f"SEV-{name}"]
        except KeyError as exc:
            raise CertificateFormatError(f"{name} root bundle lacks ARK-{name} or SEV-{name}") from exc
        asvk = by_cn.get(f"SEV-VLEK-{name}")
        try:
            _verify_signed_by(ark, ark)
            _verify_signed_by(ask, ark)
            if asvk is not None:
                _verify_signed_by(asvk, ark)
        except InvalidSignature as exc:
            raise CertChainInvalid(f"{name} root bundle does not verify under its ARK") from exc
        return cls(product, ark, ask, asvk)

    def intermediate(self, kind: SigningKey) -> x509.Certificate | None:
        return self.ask if kind is SigningKey.VCEK else self.asvk


@dataclass(frozen=True)
class RevocationList:
    """An AMD KDS CRL (``/vcek/v1/<product>/crl``), checked to be signed by the product's ARK."""

    product: Product
    revoked_serials: frozenset[int]
    last_update: datetime
    next_update: datetime | None

    @classmethod
    def from_bytes(cls, untrusted: bytes, roots: ProductRoots) -> RevocationList:
        if len(untrusted) > MAX_CERT_FILE * 4:
            raise CertificateFormatError("CRL is too large")
        try:
            if untrusted.lstrip().startswith(b"-----BEGIN"):
                crl = x509.load_pem_x509_crl(untrusted)
            else:
                crl = x509.load_der_x509_crl(untrusted)
        except ValueError as exc:
            raise CertificateFormatError("not a DER or PEM X.509 CRL") from exc
        name = roots.product.value
        try:
            ark_key = roots.ark.public_key()
            ok = (
                isinstance(ark_key, rsa.RSAPublicKey)
                and crl.issuer == roots.ark.subject
                and crl.is_signature_valid(ark_key)
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            ok = False
        if not ok:
            raise CertChainInvalid(f"CRL is not signed by ARK-{name}")
        return cls(
            product=roots.product,
            revoked_serials=frozenset(r.serial_number for r in crl),
            last_update=crl.last_update_utc,
            next_update=crl.next_update_utc,
        )


def _builtin_roots() -> dict[Product, ProductRoots]:
    out = {}
    pkg = resources.files("attestation.snp").joinpath("roots")
    for p in Product:
        pem = pkg.joinpath(f"{p.value.lower()}_ask_ark_asvk.pem").read_bytes()
        out[p] = ProductRoots.from_pem(p, pem)
    return out


@dataclass(frozen=True)
class EndorsementCert:
    """A parsed VCEK or VLEK with its AMD extensions."""

    cert: x509.Certificate
    kind: SigningKey
    public_key: ec.EllipticCurvePublicKey
    product_name: str | None
    struct_version: int | None
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None
    fingerprint: bytes

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> EndorsementCert:
        """Parse a DER/PEM VCEK or VLEK (memoized: the result is immutable)."""
        return _parse_endorsement(bytes(untrusted))

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> EndorsementCert:
        cn = _common_name(cert)
        if cn == "SEV-VCEK":
            kind = SigningKey.VCEK
        elif cn == "SEV-VLEK":
            kind = SigningKey.VLEK
        else:
            raise CertificateFormatError(f"certificate CN {cn[:32]!r} is neither SEV-VCEK nor SEV-VLEK")
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateFormatError("VCEK/VLEK public key does not parse") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise CertificateFormatError("VCEK/VLEK key must be ECDSA P-384")
        ext: dict[str, bytes] = {}
        for e in cert.extensions:
            if e.oid.dotted_string.startswith(_AMD_OID + "."):
                if not isinstance(e.value, x509.UnrecognizedExtension):
                    raise CertificateFormatError("AMD extension parsed unexpectedly")
                ext[e.oid.dotted_string] = e.value.value

        def spl(oid: str, name: str) -> int:
            if oid not in ext:
                raise CertificateFormatError(f"{cn} lacks the {name} extension")
            v = _der_uint(ext[oid])
            if v > 0xFF:
                raise CertificateFormatError(f"{cn} {name} extension is out of range")
            return v

        product_name = None
        if _OID_PRODUCT_NAME in ext:
            product_name = _der_tlv(ext[_OID_PRODUCT_NAME], 0x16).decode("ascii", "replace")
        struct_version = _der_uint(ext[_OID_STRUCT_VERSION]) if _OID_STRUCT_VERSION in ext else None
        csp_id = None
        if _OID_CSP_ID in ext:
            csp_id = _der_tlv(ext[_OID_CSP_ID], 0x16).decode("ascii", "replace")
        hwid = None
        if _OID_HWID in ext:
            raw = ext[_OID_HWID]
            # Older VCEKs carry the 64 raw bytes; newer ones a DER OCTET STRING (Turin: 8 bytes).
            hwid = raw if len(raw) in (8, 64) else _der_tlv(raw, 0x04)
            if len(hwid) not in (8, 64):
                raise CertificateFormatError("VCEK hwID extension must hold 8 or 64 bytes")
        if kind is SigningKey.VCEK and hwid is None:
            raise CertificateFormatError("VCEK lacks the hwID extension")
        return cls(
            cert=cert,
            kind=kind,
            public_key=key,
            product_name=product_name,
            struct_version=struct_version,
            bootloader=spl(_OID_BL_SPL, "blSPL"),
            tee=spl(_OID_TEE_SPL, "teeSPL"),
            snp=spl(_OID_SNP_SPL, "snpSPL"),
            microcode=spl(_OID_UCODE_SPL, "ucodeSPL"),
            fmc=spl(_OID_FMC_SPL, "fmcSPL") if _OID_FMC_SPL in ext else None,
            hwid=hwid,
            csp_id=csp_id,
            fingerprint=_fingerprint(cert),
        )


@functools.lru_cache(maxsize=256)
def _parse_endorsement(der: bytes) -> EndorsementCert:
    return EndorsementCert.from_certificate(load_certificate(der))


@dataclass
class TrustStore:
    """Pinned AMD roots per product plus a cache of verified certificate signatures.

    The roots are trust material: pass them explicitly (``TrustStore(roots)``)
    or use :meth:`builtin` for the ones shipped with this package.
    """

    roots: Mapping[Product, ProductRoots]
    _verified: set[tuple[bytes, bytes]] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _BUILTIN: ClassVar[dict[Product, ProductRoots] | None] = None

    @classmethod
    def builtin(cls) -> TrustStore:
        """A store over the roots shipped in ``attestation/snp/roots``."""
        if TrustStore._BUILTIN is None:
            TrustStore._BUILTIN = _builtin_roots()
        return cls(dict(TrustStore._BUILTIN))

    def signed_by(self, cert: x509.Certificate, issuer: x509.Certificate, fp: bytes | None = None) -> bool:
        """True if ``issuer`` signed ``cert`` (memoized on success)."""
        key = (_fingerprint(issuer), fp or _fingerprint(cert))
        with self._lock:
            if key in self._verified:
                return True
        try:
            _verify_signed_by(cert, issuer)
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            return False
        with self._lock:
            self._verified.add(key)
        return True
