"""IBM Secure Execution attestation wire formats (s390-tools ``pv`` crate is
the public reference; all integers big-endian).

* **ARCB** (attestation request control block), built by the relying party
  and handed to the Ultravisor through the guest: a 48-byte request header
  (magic 0, version 0x0100, total length, 12-byte IV, key-slot count,
  encrypted-area size), the plaintext attestation flags (8) and measurement
  algorithm (4, HMAC-SHA512 = 1), the requester's ephemeral P-521 public key
  (x, y, 80 bytes each), one 80-byte key slot per host key, then the
  confidential area (measurement key 64 || nonce 16) encrypted with AES-256-GCM
  under a random request-protection key, the whole prefix as AAD, and the tag.
  A key slot is ``SHA-256(host key x||y) || AES-GCM(K, iv=0, protection key)``
  with ``K = SHA-256(ECDH(requester, host key) || 00000001)``.
* **SE-header tags** (``BootHdrTags``): page-list, address-list and
  tweak-list digests (64 bytes each) and the header's GCM tag (16) of the
  guest image's SE header.
* **Measurement**: HMAC-SHA512 with the measurement key over tags || config
  UID (16) || user-data length (u16) || 0 (u16) || additional-data length
  (u32) || user data || nonce || additional data.
* **Additional data** with the image / attestation public-host-key-hash
  flags: two SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.se.errors import SeFormatError

__all__ = [
    "FLAG_ATTEST_PHKH",
    "FLAG_IMAGE_PHKH",
    "FLAG_NONCE",
    "MEASUREMENT_SIZE",
    "TAGS_SIZE",
    "Arcb",
    "additional_data_phkhs",
    "boot_hdr_tags",
    "build_arcb",
    "ec_coords",
    "measurement",
]

ATTESTATION_VERSION_ONE = 0x0100
MEAS_ALG_HMAC_SHA512 = 1
MEASUREMENT_SIZE = 64
TAGS_SIZE = 0xD0
PHKH_SIZE = 0x20
# flag bits, numbered from the most significant bit of the 8-byte field
FLAG_NONCE = 1
FLAG_IMAGE_PHKH = 2
FLAG_ATTEST_PHKH = 3

_HDR_MAGIC = b"IBMSecEx"
_HDR_HEAD = 0x1A0
_COORD = 80


def _flags(*bits: int) -> bytes:
    v = 0
    for b in bits:
        v |= 1 << (63 - b)
    return struct.pack(">Q", v)


def ec_coords(key: ec.EllipticCurvePublicKey) -> bytes:
    """x || y, each zero-padded to 80 bytes (P-521)."""
    if not isinstance(key.curve, ec.SECP521R1):
        raise ValueError("IBM SE host keys and request keys are P-521")
    n = key.public_numbers()
    return n.x.to_bytes(_COORD, "big") + n.y.to_bytes(_COORD, "big")


def _derive(priv: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(priv.exchange(ec.ECDH(), peer) + b"\x00\x00\x00\x01").digest()


@dataclass(frozen=True)
class Arcb:
    blob: bytes
    measurement_key: bytes
    nonce: bytes
    flags: bytes

    @property
    def additional_size(self) -> int:
        v = int.from_bytes(self.flags, "big")
        return PHKH_SIZE * sum(1 for b in (FLAG_IMAGE_PHKH, FLAG_ATTEST_PHKH) if v & (1 << (63 - b)))


def build_arcb(
    host_keys: list[ec.EllipticCurvePublicKey],
    *,
    requester_key: ec.EllipticCurvePrivateKey | None = None,
    protection_key: bytes | None = None,
    iv: bytes | None = None,
    measurement_key: bytes | None = None,
    nonce: bytes | None = None,
) -> Arcb:
    """A version-1 ARCB asking for HMAC-SHA512 with nonce, image PHKH and
    attestation PHKH (what trustee requests). Random values unless given (tests)."""
    if not 1 <= len(host_keys) <= 255:
        raise ValueError("an ARCB needs 1..255 host keys")
    priv = requester_key or ec.generate_private_key(ec.SECP521R1())
    prot = protection_key or os.urandom(32)
    iv = iv or os.urandom(12)
    mkey = measurement_key or os.urandom(MEASUREMENT_SIZE)
    nonce = nonce or os.urandom(16)
    if len(prot) != 32 or len(iv) != 12 or len(mkey) != MEASUREMENT_SIZE or len(nonce) != 16:
        raise ValueError("wrong ARCB key, IV, measurement key or nonce size")
    flags = _flags(FLAG_NONCE, FLAG_IMAGE_PHKH, FLAG_ATTEST_PHKH)
    body = flags + struct.pack(">II", MEAS_ALG_HMAC_SHA512, 0) + ec_coords(priv.public_key())
    for hk in host_keys:
        wrapped = AESGCM(_derive(priv, hk)).encrypt(bytes(12), prot, b"")
        body += hashlib.sha256(ec_coords(hk)).digest() + wrapped
    conf = mkey + nonce
    total = 48 + len(body) + len(conf) + 16
    header = (
        bytes(8)
        + struct.pack(">II", ATTESTATION_VERSION_ONE, total)
        + iv
        + bytes(4)
        + bytes(7)
        + bytes([len(host_keys)])
        + bytes(4)
        + struct.pack(">I", len(conf))
    )
    aad = header + body
    return Arcb(aad + AESGCM(prot).encrypt(iv, conf, aad), mkey, nonce, flags)


def boot_hdr_tags(untrusted_hdr: bytes) -> bytes:
    """The 208-byte tags (PLD, ALD, TLD, tag) of an SE header (``pvextract-hdr`` output)."""
    if len(untrusted_hdr) < _HDR_HEAD + 16 or untrusted_hdr[:8] != _HDR_MAGIC:
        raise SeFormatError("not an IBM Secure Execution header (magic)")
    version, size = struct.unpack_from(">II", untrusted_hdr, 8)
    if version != 0x100:
        raise SeFormatError(f"unsupported SE header version {version:#x}")
    if not _HDR_HEAD + 16 <= size <= len(untrusted_hdr):
        raise SeFormatError("SE header size out of range")
    digests = untrusted_hdr[_HDR_HEAD - 3 * 64 : _HDR_HEAD]
    return digests + untrusted_hdr[size - 16 : size]


def measurement(
    key: bytes, tags: bytes, cuid: bytes, user_data: bytes, nonce: bytes | None, additional: bytes
) -> bytes:
    if len(tags) != TAGS_SIZE or len(cuid) != 16 or len(user_data) > 256:
        raise SeFormatError("SE attestation items have the wrong sizes")
    items = (
        tags
        + cuid
        + struct.pack(">HHI", len(user_data), 0, len(additional))
        + user_data
        + (nonce or b"")
        + additional
    )
    return hmac.new(key, items, hashlib.sha512).digest()


def additional_data_phkhs(additional: bytes) -> tuple[bytes, bytes]:
    """(image PHKH, attestation PHKH) from additional data requested with both flags."""
    if len(additional) != 2 * PHKH_SIZE:
        raise SeFormatError("SE additional data must hold the image and attestation PHKH")
    return additional[:PHKH_SIZE], additional[PHKH_SIZE:]
