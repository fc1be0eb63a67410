"""NVIDIA device certificate chains: loading, chain checks at a given time, FWID.

Device chains are PEM, leaf first, root last (as NVML returns them). The
leaf ("... GSP FMC LF" / "... FSP FMC LF") holds the attestation key and, on
recent firmware, a TCG DICE extension carrying the firmware ID (FWID) that
must equal the FWID in the report's opaque data:

* Hopper: extension 2.23.133.5.4.1; the FWID is the digest of its last
  ``SEQUENCE {hashAlg OID, digest OCTET STRING}``;
* Blackwell: extension 2.23.133.5.4.1.1 (DICE MultiTcbInfo): a DiceTcbInfo
  (or a SEQUENCE OF them); the FWID is ``fwids[0].digest`` of the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from attestation._x509 import is_ca
from attestation.nvidia import _der
from attestation.nvidia.errors import NvidiaFormatError, NvidiaVerificationError

__all__ = [
    "DEVICE_ROOT_SHA1",
    "MAX_CHAIN_SIZE",
    "OID_DICE_MULTI_TCB_INFO",
    "OID_DICE_TCB_INFO",
    "arch_of_leaf",
    "default_device_root",
    "default_rim_root",
    "leaf_fwid",
    "load_pem_chain",
    "verify_chain",
    "verify_raw_ecdsa_p384",
]

#: Largest PEM chain accepted (NVML's attestation chain buffer is 0x1400 bytes; RIMs carry 4 certs).
MAX_CHAIN_SIZE = 64 * 1024
MAX_CHAIN_CERTS = 8
OID_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
OID_DICE_MULTI_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1.1")
#: SHA-1 of the DER of "NVIDIA Device Identity CA", the value trustee pins.
DEVICE_ROOT_SHA1 = "72be15b8b2c8d3f482f84237a6fcc45b8a1354e8"

_ARCH_BY_CN_PREFIX = {"GH100": "HOPPER", "GB100": "BLACKWELL", "GB": "BLACKWELL", "LS_10": "LS10"}


def _load_resource(name: str) -> x509.Certificate:
    data = resources.files("attestation.nvidia.data").joinpath(name).read_bytes()
    return x509.load_pem_x509_certificate(data)


def default_device_root() -> x509.Certificate:
    """NVIDIA Device Identity CA, shipped as package data (checked against its SHA-1 pin)."""
    cert = _load_resource("nvidia_device_root.pem")
    if cert.fingerprint(hashes.SHA1()).hex() != DEVICE_ROOT_SHA1:  # noqa: S303 - a pin, not a signature
        raise NvidiaVerificationError(
            "packaged NVIDIA device root does not match its pin; reinstall the package"
        )
    return cert


def default_rim_root() -> x509.Certificate:
    """NVIDIA CoRIM signing Root CA, shipped as package data."""
    return _load_resource("nvidia_rim_root.pem")


def load_pem_chain(untrusted_pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parse a PEM chain (leaf first). Raises EvidenceFormatError."""
    if len(untrusted_pem) > MAX_CHAIN_SIZE:
        raise NvidiaFormatError(f"certificate chain is larger than {MAX_CHAIN_SIZE} bytes")
    try:
        certs = x509.load_pem_x509_certificates(untrusted_pem)
    except ValueError as exc:
        raise NvidiaFormatError("certificate chain is not a PEM certificate list") from exc
    if len(certs) > MAX_CHAIN_CERTS:
        raise NvidiaFormatError(f"certificate chain has more than {MAX_CHAIN_CERTS} certificates")
    return tuple(certs)


def _subject_cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def arch_of_leaf(leaf: x509.Certificate) -> str:
    """ "HOPPER", "BLACKWELL" or "LS10" from the leaf's CN ("GH100 A01 GSP FMC LF", ...)."""
    cn = _subject_cn(leaf)
    if not cn.endswith("FMC LF"):
        raise NvidiaVerificationError(f"leaf certificate {cn!r} is not an NVIDIA attestation key (FMC LF)")
    for prefix, arch in _ARCH_BY_CN_PREFIX.items():
        if cn.startswith(prefix):
            return arch
    raise NvidiaVerificationError(f"leaf certificate {cn!r} is not an NVIDIA GPU or NVSwitch attestation key")


def verify_raw_ecdsa_p384(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    """Check a raw r||s ECDSA P-384/SHA-384 signature with ``cert``'s key."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise NvidiaVerificationError("signing certificate does not hold a P-384 key")
    if len(signature) != 96:
        raise NvidiaVerificationError("signature is not a 96-byte P-384 r||s value")
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise NvidiaVerificationError("signature does not verify") from exc


def _check_time(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise NvidiaVerificationError(
            f"{what} {_subject_cn(cert)!r} is not valid before {cert.not_valid_before_utc}"
        )
    if now > cert.not_valid_after_utc:
        raise NvidiaVerificationError(f"{what} {_subject_cn(cert)!r} expired {cert.not_valid_after_utc}")


def verify_chain(
    chain: Sequence[x509.Certificate], *, root: x509.Certificate, now: datetime, what: str = "certificate"
) -> None:
    """Check that ``chain`` (leaf first) links up to ``root`` and that every
    certificate is valid at ``now``. The chain may end with the root or with
    a certificate the root issued. Raises VerificationError."""
    if not chain:
        raise NvidiaVerificationError(f"{what} chain is empty")
    certs = list(chain)
    if certs[-1] != root:
        certs.append(root)
    if len(certs) < 2:
        raise NvidiaVerificationError(f"{what} chain holds only the root, not a leaf")
    if certs.count(root) != 1 or certs[-1] != root:
        raise NvidiaVerificationError(f"{what} chain does not end at the trusted root")
    for i, cert in enumerate(certs):
        _check_time(cert, now, what)
        if i + 1 < len(certs):
            issuer = certs[i + 1]
            if not is_ca(issuer):
                raise NvidiaVerificationError(f"{what} chain: {_subject_cn(issuer)!r} is not a CA")
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise NvidiaVerificationError(
                    f"{what} chain broken: {_subject_cn(cert)!r} is not signed by {_subject_cn(issuer)!r}"
                ) from exc


def _fwid_from_digest_seq(tlv: _der.Tlv) -> bytes | None:
    if tlv.tag != 0x30:
        return None
    parts = tlv.children()
    if len(parts) == 2 and parts[0].tag == 0x06 and parts[1].tag == 0x04:
        return parts[1].content
    return None


def _fwid_from_tcb_info(tcb: _der.Tlv) -> bytes | None:
    """DiceTcbInfo: context tag [6] (constructed, 0xA6) = FWIDLIST."""
    for field in tcb.children():
        if field.tag == 0xA6:
            fwids = field.children()
            if not fwids:
                return None
            return _fwid_from_digest_seq(fwids[0])
    return None


def leaf_fwid(leaf: x509.Certificate) -> bytes | None:
    """The FWID in the leaf's DICE extension, or None when it has none."""
    for ext in leaf.extensions:
        oid = ext.oid
        if oid not in (OID_DICE_TCB_INFO, OID_DICE_MULTI_TCB_INFO):
            continue
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            continue
        top = _der.parse_one(value.value)
        if top.tag != 0x30:
            raise NvidiaFormatError("DICE extension is not a SEQUENCE")
        kids = top.children()
        if oid == OID_DICE_TCB_INFO:
            # NVIDIA's Hopper layout: the FWID is the last element's digest.
            fwid = _fwid_from_digest_seq(kids[-1]) if kids else None
            if fwid is None:
                raise NvidiaFormatError("DICE TcbInfo extension has no trailing FWID")
            return fwid
        first = kids[0] if kids else None
        if first is not None and first.tag == 0x30:  # SEQUENCE OF DiceTcbInfo
            fwid = _fwid_from_tcb_info(first)
        else:
            fwid = _fwid_from_tcb_info(top)
        if fwid is None:
            raise NvidiaFormatError("DICE MultiTcbInfo extension has no FWID")
        return fwid
    return None
