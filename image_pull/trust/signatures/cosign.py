"""Cosign signatures (legacy ``.sig`` tag scheme) and their verification.

Storage (reference oci.md §3.4): the signatures of manifest ``sha256:<hex>`` are
the layers of the manifest tagged ``sha256-<hex>.sig`` in the same repository;
each layer (media type ``application/vnd.dev.cosign.simplesigning.v1+json``)
is the payload JSON, with annotations ``dev.cosignproject.cosign/signature``
(base64 signature over the exact payload bytes), and for keyless signing
``dev.sigstore.cosign/certificate`` / ``dev.sigstore.cosign/chain`` (PEM) and
``dev.sigstore.cosign/bundle`` (Rekor SET JSON).

Verification (raises :class:`SignatureRejected`, returns the verified payload):

* key-based: ECDSA (P-256/384/521, SHA-256 as sigstore hard-codes), RSA
  PKCS#1 v1.5 SHA-256, or Ed25519 over the payload bytes;
* Rekor SET: ECDSA(SHA-256) by a trusted Rekor key over the RFC 8785 canonical
  JSON of ``Payload``; ``logID`` = sha256 of that key's SPKI; the hashedrekord
  body must name this signature, this key/certificate and sha256(payload);
* Fulcio: the leaf certificate chains (via ``chain`` intermediates) to the
  configured CA *at the Rekor integratedTime*, has the codeSigning EKU, the
  OIDC issuer extension (1.3.6.1.4.1.57264.1.1 raw / .1.8 UTF8String, both
  must agree) equals ``oidcIssuer`` and a SAN email equals ``subjectEmail``;
  SCTs are not checked (as containers/image).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads
from image_pull.errors import ManifestError, NotFound
from image_pull.manifest import Manifest, parse_manifest_document
from image_pull.reference import Reference
from image_pull.registry import RegistryClient
from image_pull.trust.errors import InvalidPolicy, SignatureRejected

__all__ = [
    "ANN_BUNDLE",
    "ANN_CERT",
    "ANN_CHAIN",
    "ANN_SIGNATURE",
    "COSIGN_PAYLOAD_TYPE",
    "CosignSignature",
    "PublicKey",
    "RekorEntry",
    "fetch_cosign_signatures",
    "load_certificates",
    "load_public_keys",
    "signature_tag",
    "verify_fulcio_certificate",
    "verify_pki_certificate",
    "verify_rekor_set",
    "verify_with_key",
]

ANN_SIGNATURE = "dev.cosignproject.cosign/signature"
ANN_CERT = "dev.sigstore.cosign/certificate"
ANN_CHAIN = "dev.sigstore.cosign/chain"
ANN_BUNDLE = "dev.sigstore.cosign/bundle"
COSIGN_PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
MAX_COSIGN_SIGNATURES = 64
MAX_COSIGN_PAYLOAD = 4 << 20
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
MAX_CHAIN = 8

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class CosignSignature:
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    certificate: bytes | None = field(default=None, repr=False)
    chain: bytes | None = field(default=None, repr=False)
    bundle: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_sigstore_json(cls, untrusted_blob: bytes) -> CosignSignature:
        """containers/image's ``\\x00sigstore-json\\n{...}`` storage format (dir: layouts, fixtures)."""
        prefix = b"\x00sigstore-json\n"
        if not untrusted_blob.startswith(prefix):
            raise SignatureRejected("not a sigstore-json signature")
        try:
            doc = strict_loads(untrusted_blob[len(prefix) :])
        except (ValueError, RecursionError) as exc:
            raise SignatureRejected("sigstore-json signature is not valid JSON") from exc
        if not isinstance(doc, dict) or doc.get("mimeType") != COSIGN_PAYLOAD_TYPE:
            raise SignatureRejected("sigstore-json signature has an unexpected mimeType")
        ann = doc.get("annotations")
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            raise SignatureRejected("sigstore-json signature annotations are malformed")
        return cls._from_parts(_b64(doc.get("payload"), "payload"), ann)

    @classmethod
    def _from_parts(cls, payload: bytes, ann: dict[str, str]) -> CosignSignature:
        sig_b64 = ann.get(ANN_SIGNATURE)
        if sig_b64 is None:
            raise SignatureRejected("cosign signature layer lacks its signature annotation")
        sig = _b64(sig_b64.replace("\n", "").replace("\r", ""), "signature")

        def enc(k: str) -> bytes | None:
            v = ann.get(k)
            return v.encode() if v else None

        return cls(payload, sig, enc(ANN_CERT), enc(ANN_CHAIN), enc(ANN_BUNDLE))


@dataclass(frozen=True)
class RekorEntry:
    integrated_time: int
    log_index: int
    log_id: str


def _b64(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise SignatureRejected(f"cosign {what} is not a string")
    try:
        return b64_decode(v)
    except ValueError as exc:
        raise SignatureRejected(f"cosign {what} is not valid base64") from exc


def signature_tag(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    return f"{algo}-{hexd}.sig"


async def fetch_cosign_signatures(
    registry: RegistryClient, ref: Reference, digest: str
) -> list[CosignSignature]:
    """Signatures attached to ``digest`` as the ``<algo>-<hex>.sig`` tag (none: empty list)."""
    try:
        fetched = await registry.get_manifest(ref, signature_tag(digest))
    except NotFound:
        return []
    try:
        doc = parse_manifest_document(fetched.body, fetched.content_type)
    except ManifestError as exc:
        raise SignatureRejected(f"cosign signature manifest is malformed: {exc}") from exc
    if not isinstance(doc, Manifest):
        raise SignatureRejected("cosign signature tag names an index, not a manifest")
    out: list[CosignSignature] = []
    for layer in doc.layers[:MAX_COSIGN_SIGNATURES]:
        if layer.media_type != COSIGN_PAYLOAD_TYPE:
            continue
        payload = await registry.get_blob(ref, layer.digest, layer.size, limit=MAX_COSIGN_PAYLOAD)
        try:
            out.append(CosignSignature._from_parts(payload, dict(layer.annotations)))
        except SignatureRejected:
            continue  # one malformed layer does not hide the others
    return out


# ---------------------------------------------------------------------- key material
def load_public_keys(data: bytes) -> list[PublicKey]:
    """Public keys from PEM (one or more ``PUBLIC KEY`` blocks) or DER SPKI."""
    keys: list[PublicKey] = []
    blocks = _pem_blocks(data, b"PUBLIC KEY") if b"-----BEGIN" in data else [data]
    for b in blocks:
        try:
            k = (
                serialization.load_pem_public_key
                if b.startswith(b"-----")
                else serialization.load_der_public_key
            )(b)
        except (ValueError, TypeError) as exc:
            raise InvalidPolicy("a sigstore public key is not a valid PEM/DER public key") from exc
        if not isinstance(k, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise InvalidPolicy("sigstore public keys must be ECDSA, RSA or Ed25519")
        keys.append(k)
    if not keys:
        raise InvalidPolicy("no public key in the sigstore key material")
    return keys


def load_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidPolicy("CA material is not a PEM certificate bundle") from exc
    return certs


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    out: list[bytes] = []
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    pos = 0
    while True:
        i = data.find(begin, pos)
        if i < 0:
            return out
        j = data.find(end, i)
        if j < 0:
            return out
        out.append(data[i : j + len(end)] + b"\n")
        pos = j + len(end)


def _spki(k: PublicKey) -> bytes:
    return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """ECDSA-SHA256, RSA PKCS#1 v1.5-SHA256 or Ed25519, as cosign and Rekor sign."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_with_key(key: PublicKey, signature: bytes, payload: bytes) -> None:
    """Raise SignatureRejected unless ``signature`` over ``payload`` verifies with ``key``."""
    if not _verifies(key, signature, payload):
        raise SignatureRejected("cosign signature does not verify with the trusted key")


# ---------------------------------------------------------------------- Rekor SET
def _strict_obj(v: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != keys:
        raise SignatureRejected(f"Rekor bundle: {what} has unexpected members")
    return v


def verify_rekor_set(
    untrusted_bundle: bytes,
    rekor_keys: Sequence[PublicKey],
    *,
    signature: bytes,
    payload: bytes,
    signer_key: PublicKey | None = None,
    signer_cert: x509.Certificate | None = None,
) -> RekorEntry:
    """Verify a ``dev.sigstore.cosign/bundle`` SET and that its entry covers this signature."""
    try:
        doc = strict_loads(untrusted_bundle)
    except (ValueError, RecursionError) as exc:
        raise SignatureRejected("Rekor bundle is not valid JSON") from exc
    doc = _strict_obj(doc, {"SignedEntryTimestamp", "Payload"}, "bundle")
    p = _strict_obj(doc["Payload"], {"body", "integratedTime", "logIndex", "logID"}, "Payload")
    set_sig = _b64(doc["SignedEntryTimestamp"], "SignedEntryTimestamp")
    if not isinstance(p["body"], str) or not isinstance(p["logID"], str):
        raise SignatureRejected("Rekor bundle body/logID must be strings")
    for k in ("integratedTime", "logIndex"):
        if not isinstance(p[k], int) or isinstance(p[k], bool):
            raise SignatureRejected(f"Rekor bundle {k} must be an integer")
    canonical = rfc8785.dumps(p)
    signer: PublicKey | None = None
    for rk in rekor_keys:
        if hashlib.sha256(_spki(rk)).hexdigest() != p["logID"]:
            continue
        if _verifies(rk, set_sig, canonical):
            signer = rk
            break
    if signer is None:
        raise SignatureRejected("Rekor SET is not signed by a trusted Rekor key")
    try:
        body = strict_loads(_b64(p["body"], "Rekor body"))
    except (ValueError, RecursionError) as exc:
        raise SignatureRejected("Rekor entry body is not valid JSON") from exc
    if not isinstance(body, dict) or body.get("kind") != "hashedrekord" or body.get("apiVersion") != "0.0.1":
        raise SignatureRejected("Rekor entry is not a hashedrekord 0.0.1")
    try:
        spec = body["spec"]
        sig_content = spec["signature"]["content"]
        pub_content = spec["signature"]["publicKey"]["content"]
        h = spec["data"]["hash"]
        algo, value = h["algorithm"], h["value"]
    except (KeyError, TypeError) as exc:
        raise SignatureRejected("Rekor entry lacks signature, key or hash") from exc
    if _b64(sig_content, "Rekor signature") != signature:
        raise SignatureRejected("Rekor entry records another signature")
    if algo != "sha256" or value != hashlib.sha256(payload).hexdigest():
        raise SignatureRejected("Rekor entry records another payload hash")
    pub_pem = _b64(pub_content, "Rekor public key")
    if signer_cert is not None:
        try:
            rc = x509.load_pem_x509_certificate(pub_pem)
        except ValueError as exc:
            raise SignatureRejected("Rekor entry does not record the signing certificate") from exc
        if rc.public_bytes(serialization.Encoding.DER) != signer_cert.public_bytes(
            serialization.Encoding.DER
        ):
            raise SignatureRejected("Rekor entry records another certificate")
    elif signer_key is not None:
        try:
            rk2 = serialization.load_pem_public_key(pub_pem)
        except (ValueError, TypeError) as exc:
            raise SignatureRejected("Rekor entry does not record the signing key") from exc
        if not isinstance(rk2, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey) or (
            _spki(rk2) != _spki(signer_key)
        ):
            raise SignatureRejected("Rekor entry records another public key")
    return RekorEntry(p["integratedTime"], p["logIndex"], p["logID"])


# ---------------------------------------------------------------------- certificates
def _verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
) -> None:
    root_ders = {r.public_bytes(serialization.Encoding.DER) for r in roots}
    pool = list(intermediates) + list(roots)
    cur = leaf
    for _depth in range(MAX_CHAIN):
        if not cur.not_valid_before_utc <= at <= cur.not_valid_after_utc:
            raise SignatureRejected("a certificate in the signing chain was not valid at signing time")
        if cur.public_bytes(serialization.Encoding.DER) in root_ders:
            return
        if cur.subject == cur.issuer:
            break  # a self-issued certificate that is not a trust root
        issuer = None
        for cand in pool:
            if cand.subject != cur.issuer:
                continue
            try:
                cur.verify_directly_issued_by(cand)
            except (ValueError, TypeError, InvalidSignature):
                continue
            try:
                bc = cand.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                continue
            if not bc.ca:
                continue
            issuer = cand
            break
        if issuer is None:
            break
        cur = issuer
    else:
        raise SignatureRejected("certificate chain too long")
    raise SignatureRejected("signing certificate does not chain to the trusted CA")


def _leaf_checks(leaf: x509.Certificate) -> None:
    """codeSigning usage, with Go's x509 rule (containers/image verifies with crypto/x509):
    a certificate without an ExtendedKeyUsage extension is valid for any usage."""
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise SignatureRejected("signing certificate lacks the codeSigning key usage")


def _sans(leaf: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _oidc_issuer(leaf: x509.Certificate) -> str | None:
    v1 = v2 = None
    for ext in leaf.extensions:
        if ext.oid == OID_ISSUER_V1 and isinstance(ext.value, x509.UnrecognizedExtension):
            v1 = ext.value.value.decode("utf-8", "replace")
        elif ext.oid == OID_ISSUER_V2 and isinstance(ext.value, x509.UnrecognizedExtension):
            raw = ext.value.value
            if len(raw) < 2 or raw[0] != 0x0C:  # DER UTF8String
                raise SignatureRejected("Fulcio issuer (v2) extension is not a UTF8String")
            n, off = raw[1], 2
            if n & 0x80:
                nb = n & 0x7F
                n, off = int.from_bytes(raw[2 : 2 + nb], "big"), 2 + nb
            if off + n != len(raw):
                raise SignatureRejected("Fulcio issuer (v2) extension has a bad length")
            v2 = raw[off:].decode("utf-8", "replace")
    if v1 is not None and v2 is not None and v1 != v2:
        raise SignatureRejected("Fulcio issuer extensions v1 and v2 disagree")
    return v2 if v2 is not None else v1


def verify_fulcio_certificate(
    untrusted_cert: bytes,
    untrusted_chain: bytes | None,
    *,
    ca: Sequence[x509.Certificate],
    oidc_issuer: str,
    subject_email: str,
    at: dt.datetime,
) -> PublicKey:
    """Check a Fulcio leaf at time ``at`` (Rekor integratedTime); returns its public key."""
    leaf, chain = _leaf_and_chain(untrusted_cert, untrusted_chain)
    _verify_chain(leaf, chain[:MAX_CHAIN], ca, at)
    _leaf_checks(leaf)
    if _oidc_issuer(leaf) != oidc_issuer:
        raise SignatureRejected("Fulcio certificate was issued for another OIDC issuer")
    san = _sans(leaf)
    emails = san.get_values_for_type(x509.RFC822Name) if san is not None else []
    if subject_email not in emails:
        raise SignatureRejected("Fulcio certificate is for another subject email")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise SignatureRejected("Fulcio certificate key type is not supported")
    return key


def _leaf_and_chain(
    untrusted_cert: bytes, untrusted_chain: bytes | None
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    try:
        leaf = x509.load_pem_x509_certificate(untrusted_cert)
        chain = x509.load_pem_x509_certificates(untrusted_chain) if untrusted_chain else []
    except ValueError as exc:
        raise SignatureRejected("cosign certificate or chain is not valid PEM") from exc
    return leaf, chain


def verify_pki_certificate(
    untrusted_cert: bytes,
    untrusted_chain: bytes | None,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    subject_hostname: str | None,
    subject_email: str | None,
    at: dt.datetime,
) -> PublicKey:
    leaf, chain = _leaf_and_chain(untrusted_cert, untrusted_chain)
    _verify_chain(leaf, list(intermediates) + chain[:MAX_CHAIN], roots, at)
    _leaf_checks(leaf)
    san = _sans(leaf)
    if subject_email is not None and (
        san is None or subject_email not in san.get_values_for_type(x509.RFC822Name)
    ):
        raise SignatureRejected("certificate is for another subject email")
    if subject_hostname is not None and (
        san is None or subject_hostname not in san.get_values_for_type(x509.DNSName)
    ):
        raise SignatureRejected("certificate is for another subject hostname")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise SignatureRejected("certificate key type is not supported")
    return key


def certificate(untrusted_cert: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(untrusted_cert)
    except ValueError as exc:
        raise SignatureRejected("cosign certificate is not valid PEM") from exc
