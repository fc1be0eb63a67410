"""Intel PKI for DCAP: the pinned Intel SGX Root CA, certificate chains and
CRLs, and the SGX extension (OID 1.2.840.113741.1.13.1) of PCK certificates.

The root CA shipped as package data (``intel_sgx_root_ca.pem``) is the DER
file ``src/TrustedRootCA.der`` of Phala-Network/dcap-qvl @ 9bffe30b (also in the
test fixtures, ``tests/fixtures/evidence/tdx/dcap-qvl/TrustedRootCA.der``); it is
byte-identical to google/go-tdx-guest ``verify/trusted_root.pem`` and to the
root at the top of every real PCK chain in the fixtures. DER SHA-256:
44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from attestation._x509 import is_ca
from attestation.tdx.errors import TdxFormatError, TdxVerificationError

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "MAX_CHAIN_PEM",
    "SGX_EXTENSION_OID",
    "PckExtension",
    "check_crl",
    "check_crl_current",
    "check_validity",
    "intel_sgx_root_ca",
    "load_pem_chain",
    "parse_pck_extension",
    "pck_ca_kind",
    "verify_chain",
    "verify_p256_raw",
]

INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
MAX_CHAIN_PEM = 32 * 1024
_DER = Encoding.DER


def intel_sgx_root_ca() -> x509.Certificate:
    """The pinned production Intel SGX Root CA (package data, hash-checked)."""
    pem = resources.files("attestation.tdx").joinpath("intel_sgx_root_ca.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(_DER)
    if hashlib.sha256(der).hexdigest() != INTEL_SGX_ROOT_CA_SHA256:
        raise TdxVerificationError("packaged Intel SGX Root CA does not match its pinned hash")
    return cert


def load_pem_chain(untrusted_pem: bytes | str, what: str) -> list[x509.Certificate]:
    data = untrusted_pem.encode() if isinstance(untrusted_pem, str) else untrusted_pem
    if len(data) > MAX_CHAIN_PEM:
        raise TdxFormatError(f"{what}: certificate chain larger than {MAX_CHAIN_PEM} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data.rstrip(b"\x00"))
    except ValueError as exc:
        raise TdxFormatError(f"{what}: not a PEM certificate chain") from exc
    if not certs:
        raise TdxFormatError(f"{what}: empty certificate chain")
    return certs


def verify_p256_raw(public_key: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes, what: str) -> None:
    """Verify an ECDSA-P256/SHA-256 signature given as raw ``r || s``."""
    if len(raw_sig) != 64:
        raise TdxVerificationError(f"{what}: signature must be 64 bytes (r||s)")
    der = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TdxVerificationError(f"{what}: signature does not verify") from exc


def _verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if cert.issuer != issuer.subject:
        raise TdxVerificationError(f"{what}: issuer name does not match the next certificate's subject")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise TdxVerificationError(f"{what}: certificate signature by its issuer does not verify") from exc


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TdxVerificationError(
            f"{what}: certificate not valid at {now.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})"
        )


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: datetime | None,
    what: str,
) -> None:
    """The CRL is signed by ``issuer`` and (unless ``now`` is None) current at ``now``."""
    if crl.issuer != issuer.subject:
        raise TdxVerificationError(f"{what}: CRL issuer does not match")
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise TdxVerificationError(f"{what}: CRL signature does not verify")
    if now is not None:
        check_crl_current(crl, now, what)


def check_crl_current(crl: x509.CertificateRevocationList, now: datetime, what: str) -> None:
    nu = crl.next_update_utc
    if now < crl.last_update_utc or (nu is not None and now > nu):
        window = f"{crl.last_update_utc.isoformat()} .. {nu.isoformat() if nu else 'open'}"
        raise TdxVerificationError(
            f"{what}: CRL not current at {now.isoformat()} "
            f"(valid {window}; --at TIME verifies as of another time)"
        )


def verify_chain(
    untrusted_chain: Sequence[x509.Certificate],
    *,
    root: x509.Certificate,
    now: datetime | None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    what: str,
) -> x509.Certificate:
    """Verify ``leaf, intermediates..., [root]`` up to the pinned ``root``.

    The chain may or may not include the root; if it does, that certificate must
    be byte-identical to ``root``. Every certificate must be valid at ``now``
    (``None``: the caller checks validity separately);
    every CA above the leaf must be a CA. No certificate may be listed in a CRL
    of its issuer; ``crls`` must already be verified (:func:`check_crl`) by the
    caller. Returns the leaf.
    """
    if not untrusted_chain:
        raise TdxVerificationError(f"{what}: empty certificate chain")
    root_der = root.public_bytes(_DER)
    chain = list(untrusted_chain)
    if chain[-1].public_bytes(_DER) == root_der:
        chain = chain[:-1]
    elif chain[-1].subject == root.subject:
        raise TdxVerificationError(
            f"{what}: chain ends in a root CA that is not the trusted Intel SGX Root CA"
        )
    if not chain:
        raise TdxVerificationError(f"{what}: chain has no certificate below the root")
    full = [*chain, root]
    for i, cert in enumerate(chain):
        _verify_issued_by(cert, full[i + 1], f"{what} [{i}]")
    for i, cert in enumerate(full):
        if now is not None:
            check_validity(cert, now, f"{what} [{i}]")
        if i > 0 and not is_ca(cert):
            raise TdxVerificationError(f"{what} [{i}]: issuing certificate is not a CA")
    for crl in crls:
        for i, cert in enumerate(full):
            if cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                raise TdxVerificationError(f"{what} [{i}]: certificate is revoked")
    return chain[0]


# --- SGX extension -------------------------------------------------------


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated DER TLVs (definite lengths only)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise TdxFormatError("SGX extension: truncated DER")
        tag = data[i]
        ln = data[i + 1]
        i += 2
        if ln & 0x80:
            nb = ln & 0x7F
            if nb == 0 or nb > 4 or i + nb > len(data):
                raise TdxFormatError("SGX extension: bad DER length")
            ln = int.from_bytes(data[i : i + nb], "big")
            i += nb
        if i + ln > len(data):
            raise TdxFormatError("SGX extension: truncated DER value")
        out.append((tag, data[i : i + ln]))
        i += ln
    return out


def _oid_str(content: bytes) -> str:
    if not content:
        raise TdxFormatError("SGX extension: empty OID")
    parts = [content[0] // 40, content[0] % 40]
    v = 0
    for b in content[1:]:
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(v)
            v = 0
    return ".".join(str(p) for p in parts)


def _pairs(seq_content: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for tag, content in _der_items(seq_content):
        if tag != 0x30:
            raise TdxFormatError("SGX extension: expected SEQUENCE")
        items = _der_items(content)
        if len(items) != 2 or items[0][0] != 0x06:
            raise TdxFormatError("SGX extension: expected SEQUENCE { OID, value }")
        out[_oid_str(items[0][1])] = items[1]
    return out


_SGX = "1.2.840.113741.1.13.1"


@dataclass(frozen=True)
class PckExtension:
    ppid: bytes
    #: comp01..comp16 SGX TCB component SVNs
    sgx_tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    #: 0 standard, 1 scalable, 2 scalable with integrity
    sgx_type: int
    platform_instance_id: bytes | None
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


def parse_pck_extension(cert: x509.Certificate) -> PckExtension:
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound as exc:
        raise TdxFormatError("PCK certificate has no SGX extension") from exc
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    top = _der_items(raw)
    if len(top) != 1 or top[0][0] != 0x30:
        raise TdxFormatError("SGX extension: not a SEQUENCE")
    fields = _pairs(top[0][1])

    def get(sub: str, tag: int) -> bytes:
        item = fields.get(f"{_SGX}.{sub}")
        if item is None or item[0] != tag:
            raise TdxFormatError(f"SGX extension: field .{sub} missing or mistyped")
        return item[1]

    tcb = _pairs(get("2", 0x30))
    comps = []
    for n in range(1, 17):
        t = tcb.get(f"{_SGX}.2.{n}")
        if t is None or t[0] != 0x02:
            raise TdxFormatError(f"SGX extension: TCB comp{n:02d} missing")
        comps.append(int.from_bytes(t[1], "big"))
    pcesvn_t = tcb.get(f"{_SGX}.2.17")
    cpusvn_t = tcb.get(f"{_SGX}.2.18")
    if pcesvn_t is None or pcesvn_t[0] != 0x02 or cpusvn_t is None or cpusvn_t[0] != 0x04:
        raise TdxFormatError("SGX extension: PCESVN/CPUSVN missing")
    sgx_type_t = fields.get(f"{_SGX}.5")
    if sgx_type_t is None or sgx_type_t[0] != 0x0A:
        raise TdxFormatError("SGX extension: SGX type missing")
    piid_t = fields.get(f"{_SGX}.6")
    conf: dict[str, tuple[int, bytes]] = {}
    conf_t = fields.get(f"{_SGX}.7")
    if conf_t is not None and conf_t[0] == 0x30:
        conf = _pairs(conf_t[1])

    def flag(n: int) -> bool | None:
        v = conf.get(f"{_SGX}.7.{n}")
        return None if v is None else v[1] != b"\x00"

    fmspc = get("4", 0x04)
    if len(fmspc) != 6:
        raise TdxFormatError("SGX extension: FMSPC must be 6 bytes")
    return PckExtension(
        ppid=get("1", 0x04),
        sgx_tcb_components=tuple(comps),
        pce_svn=int.from_bytes(pcesvn_t[1], "big"),
        cpu_svn=cpusvn_t[1],
        pce_id=get("3", 0x04),
        fmspc=fmspc,
        sgx_type=int.from_bytes(sgx_type_t[1], "big"),
        platform_instance_id=piid_t[1] if piid_t is not None and piid_t[0] == 0x04 else None,
        dynamic_platform=flag(1),
        cached_keys=flag(2),
        smt_enabled=flag(3),
    )


def pck_ca_kind(chain: list[x509.Certificate]) -> str:
    """Which Intel PCK CA issued the leaf: ``"platform"`` or ``"processor"`` (the
    collateral's ``ca`` parameter)."""
    if len(chain) < 2:
        raise TdxVerificationError("PCK chain has no intermediate CA")
    cns = chain[1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    if cn == "Intel SGX PCK Platform CA":
        return "platform"
    if cn == "Intel SGX PCK Processor CA":
        return "processor"
    raise TdxVerificationError(f"unexpected PCK intermediate CA {cn!r}")
