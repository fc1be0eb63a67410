"""The KBS adapter for ``se`` (IBM Secure Execution), trustee-compatible on
the wire:

* :meth:`SeVerifier.generate_challenge` is the ``/auth`` nonce for an SE
  guest: a JSON ``SeAttestationRequest`` (``request_blob`` = an ARCB for the
  configured host keys, ``measurement_size``, ``additional_size``, the
  measurement key and nonce encrypted to the KBS's RSA key
  (RSAES-PKCS1-v1_5, as trustee), and the image's SE-header tags);
* :meth:`SeVerifier.verify` checks the guest's ``SeAttestationResponse``:
  user data begins with the expected report data, the HMAC-SHA512
  measurement over the attestation items verifies with the measurement key,
  the additional data carries the image and attestation host-key hashes, and
  the attestation host-key hash is one of the configured host keys.

Deliberate difference from trustee: trustee *decrypts* the measurement key
and nonce the response echoes back. Those were encrypted to the KBS's public
key, so anyone can mint a matching pair and a valid HMAC without an
Ultravisor. Here the verifier keeps what it issued (bounded, single use,
``challenge_ttl_s``) and accepts only a response that echoes an issued
challenge; it never decrypts attacker-chosen RSA ciphertexts. A response must
reach the KBS replica that issued its challenge.

Host-key documents are checked against ``hkd_signing_cert`` (IBM's host-key
signing certificate) and ``hkd_ca_certs`` when configured; without them the
documents are trusted as configured, with a WARNING (trustee's
``SE_SKIP_CERTS_VERIFICATION``). CRLs are not evaluated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from attestation.se.arcb import (
    MEASUREMENT_SIZE,
    TAGS_SIZE,
    additional_data_phkhs,
    boot_hdr_tags,
    build_arcb,
    ec_coords,
    measurement,
)
from attestation.se.errors import SeFormatError, SeVerificationError
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = ["SeVerifier", "load_host_key_document"]

log = logging.getLogger(__name__)

_REPORT_DATA_SIZE = 64
_MAX_PENDING = 4096
_RESPONSE_FIELDS = {
    "measurement",
    "additional_data",
    "user_data",
    "cuid",
    "encr_measurement_key",
    "encr_request_nonce",
    "image_hdr_tags",
}


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def load_host_key_document(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError("host-key document is not an X.509 certificate") from exc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass
class _Issued:
    measurement_key: bytes
    nonce: bytes
    tags: bytes
    encr_nonce: bytes
    expires: float


def _b64(doc: Mapping[str, Any], key: str, limit: int) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str) or len(v) > limit * 4 // 3 + 4:
        raise SeFormatError(f"SE response: {key} must be a base64 string")
    try:
        return b64_decode(v)
    except (binascii.Error, ValueError) as exc:
        raise SeFormatError(f"SE response: {key} is not standard base64") from exc


class SeVerifier:
    """:param measurement_key_private: PEM file of the KBS's RSA key pair that
        wraps the measurement key in the challenge (trustee: ``encrypt_key.pem``).
    :param host_key_documents: host-key document files (PEM/DER X.509, P-521 keys).
    :param se_image_header: the guest image's SE header (``pvextract-hdr`` output).
    :param hkd_signing_cert: IBM host-key signing certificate every document must be signed by.
    :param hkd_ca_certs: CA certificates the signing certificate must chain to (directly).
    :param challenge_ttl_s: how long an issued challenge may be answered."""

    tee = "se"

    def __init__(
        self,
        *,
        measurement_key_private: str,
        host_key_documents: Sequence[str],
        se_image_header: str,
        hkd_signing_cert: str | None = None,
        hkd_ca_certs: Sequence[str] | None = None,
        challenge_ttl_s: float = 300.0,
        now: datetime | None = None,
    ) -> None:
        key = serialization.load_pem_private_key(_read(measurement_key_private), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the SE measurement-key wrapping key must be RSA")
        self._rsa = key.public_key()
        self.tags = boot_hdr_tags(_read(se_image_header))
        docs = [load_host_key_document(_read(p)) for p in host_key_documents]
        if not docs:
            raise ValueError("at least one host-key document is needed")
        at = now or datetime.now(UTC)
        if hkd_signing_cert is not None:
            signer = load_host_key_document(_read(hkd_signing_cert))
            cas = [load_host_key_document(_read(p)) for p in hkd_ca_certs or ()]
            if cas and not any(_issued_by(signer, ca) for ca in cas):
                raise ValueError("the host-key signing certificate does not chain to a configured CA")
            for d in docs:
                if not _issued_by(d, signer):
                    raise ValueError("a host-key document is not signed by the host-key signing certificate")
                if not d.not_valid_before_utc <= at <= d.not_valid_after_utc:
                    raise ValueError("a host-key document is outside its validity period")
        else:
            log.warning("SE host-key documents are NOT verified (no hkd_signing_cert configured)")
        self.host_keys: list[ec.EllipticCurvePublicKey] = []
        for d in docs:
            k = d.public_key()
            if not isinstance(k, ec.EllipticCurvePublicKey) or not isinstance(k.curve, ec.SECP521R1):
                raise ValueError("host-key documents must carry P-521 keys")
            self.host_keys.append(k)
        self._phkhs = {hashlib.sha256(ec_coords(k)).digest() for k in self.host_keys}
        self._ttl = challenge_ttl_s
        self._issued: OrderedDict[bytes, _Issued] = OrderedDict()
        self._lock = threading.Lock()

    def _encrypt(self, data: bytes) -> bytes:
        return self._rsa.encrypt(data, padding.PKCS1v15())

    def generate_challenge(self, tee_parameters: Any = None) -> str:
        """The ``/auth`` nonce for an SE guest (a JSON ``SeAttestationRequest``)."""
        arcb = build_arcb(self.host_keys)
        encr_key = self._encrypt(arcb.measurement_key)
        encr_nonce = self._encrypt(arcb.nonce)
        now = time.monotonic()
        with self._lock:
            while self._issued and (
                len(self._issued) >= _MAX_PENDING or next(iter(self._issued.values())).expires < now
            ):
                self._issued.popitem(last=False)
            self._issued[hashlib.sha256(encr_key).digest()] = _Issued(
                arcb.measurement_key, arcb.nonce, self.tags, encr_nonce, now + self._ttl
            )
        b64 = base64.b64encode
        return json.dumps(
            {
                "request_blob": b64(arcb.blob).decode(),
                "measurement_size": MEASUREMENT_SIZE,
                "additional_size": arcb.additional_size,
                "encr_measurement_key": b64(encr_key).decode(),
                "encr_request_nonce": b64(encr_nonce).decode(),
                "image_hdr_tags": b64(self.tags).decode(),
            },
            separators=(",", ":"),
        )

    def _take(self, encr_key: bytes, encr_nonce: bytes, tags: bytes) -> _Issued:
        with self._lock:
            issued = self._issued.pop(hashlib.sha256(encr_key).digest(), None)
        if issued is None or issued.expires < time.monotonic():
            raise SeVerificationError(
                "the SE response does not answer a challenge this KBS issued (or it expired)"
            )
        if not hmac.compare_digest(issued.encr_nonce, encr_nonce) or not hmac.compare_digest(
            issued.tags, tags
        ):
            raise SeVerificationError("the SE response's nonce or image tags differ from the challenge")
        return issued

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        doc = untrusted_evidence
        if isinstance(doc, (str, bytes, bytearray)):
            if len(doc) > 64 * 1024:
                raise SeFormatError("SE evidence too large")
            try:
                doc = strict_loads(doc)
            except ValueError as exc:
                raise SeFormatError(f"SE evidence is not JSON ({exc})") from exc
        if not isinstance(doc, Mapping) or set(doc) != _RESPONSE_FIELDS:
            raise SeFormatError(f"SE evidence must have exactly {sorted(_RESPONSE_FIELDS)}")
        meas = _b64(doc, "measurement", 64)
        additional = _b64(doc, "additional_data", 4096)
        user_data = _b64(doc, "user_data", 256)
        cuid = _b64(doc, "cuid", 16)
        encr_key = _b64(doc, "encr_measurement_key", 1024)
        encr_nonce = _b64(doc, "encr_request_nonce", 1024)
        tags = _b64(doc, "image_hdr_tags", TAGS_SIZE)
        if len(cuid) != 16 or len(tags) != TAGS_SIZE or len(meas) != MEASUREMENT_SIZE:
            raise SeFormatError("SE response fields have the wrong sizes")
        issued = self._take(encr_key, encr_nonce, tags)
        expected = expected_report_data[:_REPORT_DATA_SIZE].ljust(_REPORT_DATA_SIZE, b"\x00")
        if not hmac.compare_digest(user_data[: len(expected)], expected):
            raise SeVerificationError("USER_DATA in the SE response does not match the expected report data")
        want = measurement(issued.measurement_key, issued.tags, cuid, user_data, issued.nonce, additional)
        if not hmac.compare_digest(want, meas):
            raise SeVerificationError("the SE attestation measurement does not verify")
        image_phkh, attest_phkh = additional_data_phkhs(additional)
        if attest_phkh not in self._phkhs:
            raise SeVerificationError("the SE request was unpacked with a host key this KBS did not use")
        if expected_init_data_hash is not None:
            log.warning("IBM SE verifier does not verify init data; ignoring the init-data digest")
        return {
            "cuid": cuid.hex(),
            "report_data": expected_report_data.hex(),
            "version": 0x0100,
            "image_phkh": image_phkh.hex(),
            "attestation_phkh": attest_phkh.hex(),
            "tag": issued.tags[-16:].hex(),
        }
