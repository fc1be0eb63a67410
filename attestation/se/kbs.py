"""The KBS adapter for ``se`` (IBM Secure Execution), trustee-compatible on
the wire (the checks are :mod:`attestation.se.verify`'s, the
envelope :mod:`attestation.se.evidence`'s, the host keys
:mod:`attestation.se.endorsements`'):

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

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation._files import PEM_LIMIT, read_config_file
from attestation.se.arcb import MEASUREMENT_SIZE, boot_hdr_tags, build_arcb, ec_coords
from attestation.se.endorsements import host_keys, load_host_key_document
from attestation.se.errors import SeVerificationError
from attestation.se.evidence import parse_response
from attestation.se.verify import IssuedChallenge, verify_response
from coco_common.b64 import b64_encode

__all__ = ["SeVerifier"]

log = logging.getLogger(__name__)

_MAX_PENDING = 4096


#: an SE header is a few pages (host-key slots, encrypted and tag areas)
_SE_HEADER_LIMIT = 64 << 10


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
        key_pem = read_config_file(measurement_key_private, PEM_LIMIT, "SE measurement-key wrapping key")
        key = serialization.load_pem_private_key(key_pem, None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the SE measurement-key wrapping key must be RSA")
        self._rsa = key.public_key()
        self.tags = boot_hdr_tags(read_config_file(se_image_header, _SE_HEADER_LIMIT, "SE image header"))
        signer = (
            read_config_file(hkd_signing_cert, PEM_LIMIT, "SE host-key signing certificate")
            if hkd_signing_cert is not None
            else None
        )
        self.host_keys = host_keys(
            [
                load_host_key_document(read_config_file(p, PEM_LIMIT, "SE host-key document"))
                for p in host_key_documents
            ],
            signer=load_host_key_document(signer) if signer is not None else None,
            cas=[
                load_host_key_document(read_config_file(p, PEM_LIMIT, "SE host-key CA certificate"))
                for p in hkd_ca_certs or ()
            ],
            at=now or datetime.now(UTC),
        )
        self._phkhs = {hashlib.sha256(ec_coords(k)).digest() for k in self.host_keys}
        self._ttl = challenge_ttl_s
        self._issued: OrderedDict[bytes, IssuedChallenge] = OrderedDict()
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
            self._issued[hashlib.sha256(encr_key).digest()] = IssuedChallenge(
                arcb.measurement_key, arcb.nonce, self.tags, encr_nonce, now + self._ttl
            )
        return json.dumps(
            {
                "request_blob": b64_encode(arcb.blob),
                "measurement_size": MEASUREMENT_SIZE,
                "additional_size": arcb.additional_size,
                "encr_measurement_key": b64_encode(encr_key),
                "encr_request_nonce": b64_encode(encr_nonce),
                "image_hdr_tags": b64_encode(self.tags),
            },
            separators=(",", ":"),
        )

    def _take(self, encr_key: bytes, encr_nonce: bytes, tags: bytes) -> IssuedChallenge:
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
        resp = parse_response(untrusted_evidence)
        issued = self._take(resp.encr_measurement_key, resp.encr_request_nonce, resp.image_hdr_tags)
        v = verify_response(
            resp, issued, expected_report_data=expected_report_data, host_key_hashes=self._phkhs
        )
        if expected_init_data_hash is not None:
            log.warning("IBM SE verifier does not verify init data; ignoring the init-data digest")
        return {
            "cuid": resp.cuid.hex(),
            "report_data": expected_report_data.hex(),
            "version": 0x0100,
            "image_phkh": v.image_phkh.hex(),
            "attestation_phkh": v.attestation_phkh.hex(),
            "tag": v.tags[-16:].hex(),
        }
