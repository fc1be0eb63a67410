"""ocicrypt layer decryption: annotations -> layer key -> streaming AES-256-CTR + HMAC-SHA256.

Flow for one ``+encrypted`` layer descriptor (reference oci.md §4):

1. ``org.opencontainers.image.enc.pubopts`` (base64 JSON) names the cipher,
   which must be ``AES_256_CTR_HMAC_SHA256``, and carries the ``hmac``; a layer
   without an HMAC is refused (as ocicrypt does).
2. The private options (``symkey``, ``digest``, ``cipheroptions.nonce``) are
   unwrapped from ``org.opencontainers.image.enc.keys.jwe`` with the puller's
   private keys, or from ``org.opencontainers.image.enc.keys.provider.<name>``
   through the :class:`~image_pull.hooks.KeyUnwrapper` (CDH's UnWrapKey). Other
   schemes (pkcs7, pgp, pkcs11) are not supported and say so.
3. :class:`DecryptingReader` decrypts while streaming and checks, at EOF, the
   HMAC over the whole ciphertext (key = symkey, encrypt-then-MAC) in constant
   time, then the sha256 of the plaintext against ``digest``. Until that check
   passed nothing derived from the layer may be committed: the puller unpacks
   into a staging directory and commits only after the reader reached EOF.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from coco_common.b64 import b64_decode
from image_pull.hooks import KeyUnwrapper
from image_pull.manifest import Descriptor
from image_pull.ocicrypt.errors import IntegrityError, InvalidEncryptedLayer, KeyUnavailable
from image_pull.ocicrypt.jwe import PrivateKey, _strict, jwe_decrypt, load_private_key
from image_pull.stream import Readable

__all__ = [
    "ANNOTATION_JWE",
    "ANNOTATION_PREFIX",
    "ANNOTATION_PROVIDER_PREFIX",
    "ANNOTATION_PUBOPTS",
    "CIPHER",
    "DecryptingReader",
    "LayerDecrypter",
    "LayerKey",
    "provider_refusal",
]

log = logging.getLogger("image_pull.ocicrypt")

ANNOTATION_PREFIX = "org.opencontainers.image.enc."
ANNOTATION_JWE = "org.opencontainers.image.enc.keys.jwe"
ANNOTATION_PROVIDER_PREFIX = "org.opencontainers.image.enc.keys.provider."
ANNOTATION_PUBOPTS = "org.opencontainers.image.enc.pubopts"
CIPHER = "AES_256_CTR_HMAC_SHA256"
MAX_ANNOTATION = 1 << 20
MAX_WRAPPED_ENTRIES = 64
MAX_OPTS = 64 << 10


def _b64std(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise InvalidEncryptedLayer(f"{what} is not a base64 string")
    try:
        return b64_decode(v)
    except ValueError as exc:
        raise InvalidEncryptedLayer(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class LayerKey:
    """Unwrapped private options of one layer plus its public HMAC."""

    symkey: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    digest: str
    hmac: bytes = field(repr=False)

    @classmethod
    def from_options(cls, untrusted_privopts: bytes, expected_hmac: bytes) -> LayerKey:
        if len(untrusted_privopts) > MAX_OPTS:
            raise InvalidEncryptedLayer("layer private options too large")
        doc = _strict(untrusted_privopts, "layer private options")
        if not isinstance(doc, dict) or set(doc) - {"symkey", "digest", "cipheroptions"}:
            raise InvalidEncryptedLayer("layer private options have unknown or missing members")
        symkey = _b64std(doc.get("symkey"), "symkey")
        if len(symkey) != 32:
            raise InvalidEncryptedLayer("layer symkey must be 32 bytes for AES-256")
        copts = doc.get("cipheroptions")
        if not isinstance(copts, dict) or set(copts) != {"nonce"}:
            raise InvalidEncryptedLayer("layer cipheroptions must hold exactly a nonce")
        nonce = _b64std(copts["nonce"], "nonce")
        if len(nonce) != 16:
            raise InvalidEncryptedLayer("layer nonce must be 16 bytes")
        digest = doc.get("digest")
        if not isinstance(digest, str) or digest.split(":", 1)[0] not in ("sha256", "sha512"):
            raise InvalidEncryptedLayer("layer private options lack the plaintext digest")
        return cls(symkey, nonce, digest, expected_hmac)


class DecryptingReader(io.RawIOBase):
    """Streams plaintext out of ``ciphertext``; at EOF checks HMAC and digest or raises."""

    def __init__(self, ciphertext: Readable, key: LayerKey) -> None:
        super().__init__()
        self._inner = ciphertext
        self._dec = Cipher(algorithms.AES(key.symkey), modes.CTR(key.nonce)).decryptor()
        self._mac = hmac.new(key.symkey, digestmod=hashlib.sha256)
        algo, _, self._want_digest = key.digest.partition(":")
        self._hash = hashlib.new(algo)
        self._want_mac = key.hmac
        self.verified = False
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.verified:
            return b""
        ct = self._inner.read(size if size is not None and size > 0 else 1 << 20)
        if ct:
            self._mac.update(ct)
            pt = self._dec.update(ct)
            self._hash.update(pt)
            self.count += len(pt)
            return pt
        self._finish()
        return b""

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _finish(self) -> None:
        self._dec.finalize()
        if not hmac.compare_digest(self._mac.digest(), self._want_mac):
            raise IntegrityError("encrypted layer failed its HMAC check (tampered or wrong key)")
        if not hmac.compare_digest(self._hash.hexdigest(), self._want_digest):
            raise IntegrityError("decrypted layer does not match the digest in its private options")
        self.verified = True

    def check_after_failure(self) -> None:
        """After a downstream failure (corrupt gzip, bad tar): raise IntegrityError if the
        ciphertext itself is bad, so tampering is reported as such; otherwise return."""
        try:
            self.drain()
        except IntegrityError:
            raise
        except Exception:  # the download itself failed: keep the caller's error
            return

    def drain(self) -> None:
        """Read to EOF (the decompressor may stop before the ciphertext ends)."""
        while self.read(1 << 20):
            pass


# runs of base64/base64url/hex characters long enough to carry 120+ bits of a key
_OPAQUE_RUN = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
_MAX_REASON = 240


def provider_refusal(exc: BaseException) -> str:
    """Why a key provider refused, without key material: ``ClassName: message``.

    The message is kept (a KBS ``PolicyDeny``, an unknown key id, an unreachable
    CDH are the operator's whole diagnosis) after scrubbing: only its first line,
    control characters dropped, every run of 20+ base64/hex characters (anything
    that could be 120+ bits of a key, a wrapped key or a token) replaced by
    ``[redacted]``, and a message showing escaped bytes (``\\x..``, a ``repr`` of
    ``bytes``) dropped entirely; then cut to a bounded length.
    """
    name = type(exc).__name__
    if not name.isidentifier():
        name = "Exception"
    msg = str(exc).splitlines()[0] if str(exc) else ""
    if "\\x" in msg or re.search(r"\bb['\"]", msg):
        return f"{name} (message withheld: it shows raw bytes)"
    msg = "".join(c for c in msg if c.isprintable())
    msg = _OPAQUE_RUN.sub("[redacted]", msg).strip()
    if len(msg) > _MAX_REASON:
        msg = msg[:_MAX_REASON] + "..."
    return f"{name}: {msg}" if msg else name


def _wrapped_entries(value: str, what: str) -> list[str]:
    if len(value) > MAX_ANNOTATION:
        raise InvalidEncryptedLayer(f"{what} annotation too large")
    entries = [e for e in value.split(",") if e]
    if not entries or len(entries) > MAX_WRAPPED_ENTRIES:
        raise InvalidEncryptedLayer(f"{what} annotation has no (or too many) wrapped keys")
    return entries


class LayerDecrypter:
    """Unwraps layer keys with private keys (JWE) and/or a key provider; builds readers."""

    def __init__(self, private_keys: Sequence[bytes] = (), key_provider: KeyUnwrapper | None = None) -> None:
        self._keys: list[PrivateKey] = [load_private_key(k) for k in private_keys]
        self._provider = key_provider

    async def unwrap(self, desc: Descriptor) -> LayerKey:
        """The layer key for ``desc`` (an ``+encrypted`` layer), or a DecryptionError."""
        ann: Mapping[str, str] = desc.annotations
        pub_b64 = ann.get(ANNOTATION_PUBOPTS)
        if pub_b64 is None:
            raise InvalidEncryptedLayer(f"layer {desc.digest}: no public options, so no HMAC to check")
        pub = _strict(_b64std(pub_b64, "pubopts"), "layer public options")
        if not isinstance(pub, dict) or set(pub) - {"cipher", "hmac", "cipheroptions"}:
            raise InvalidEncryptedLayer(f"layer {desc.digest}: malformed public options")
        if pub.get("cipher") != CIPHER:
            raise InvalidEncryptedLayer(f"layer {desc.digest}: unsupported layer cipher")
        mac = _b64std(pub.get("hmac"), "hmac")
        if len(mac) != 32:
            raise InvalidEncryptedLayer(f"layer {desc.digest}: HMAC is not provided")
        schemes = sorted(k for k in ann if k.startswith("org.opencontainers.image.enc.keys."))
        if not schemes:
            raise InvalidEncryptedLayer(f"layer {desc.digest} is encrypted but carries no wrapped keys")
        tried: list[str] = []
        refusals: list[str] = []
        if ANNOTATION_JWE in ann and self._keys:
            tried.append("jwe")
            for entry in _wrapped_entries(ann[ANNOTATION_JWE], "jwe"):
                try:
                    opts = jwe_decrypt(_b64std(entry, "jwe entry"), self._keys)
                except KeyUnavailable:
                    continue
                return LayerKey.from_options(opts, mac)
        providers = [k for k in schemes if k.startswith(ANNOTATION_PROVIDER_PREFIX)]
        if providers and self._provider is not None:
            for name in providers:
                tried.append(name[len("org.opencontainers.image.enc.keys.") :])
                for entry in _wrapped_entries(ann[name], name):
                    try:
                        opts = await self._provider.unwrap_key(entry.encode("ascii"))
                    except Exception as exc:  # the provider is another package: translate at the seam
                        why = provider_refusal(exc)
                        log.warning("key provider could not unwrap a key of %s: %s", desc.digest, why)
                        if why not in refusals:
                            refusals.append(why)
                        continue
                    return LayerKey.from_options(opts, mac)
        have = ", ".join(
            s.rsplit(".", 1)[-1] if "provider" not in s else s.split("keys.", 1)[1] for s in schemes
        )
        if not tried:
            raise KeyUnavailable(
                f"layer {desc.digest} is encrypted ({have}); pass a matching --decryption-key "
                "or configure a key provider"
            )
        reason = f"; key provider: {'; '.join(refusals[:3])}" if refusals else ""
        raise KeyUnavailable(f"no configured key unwraps layer {desc.digest} ({have}){reason}")

    @staticmethod
    def reader(ciphertext: BinaryIO, key: LayerKey) -> DecryptingReader:
        return DecryptingReader(ciphertext, key)
