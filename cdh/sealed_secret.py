"""Sealed secrets: ``sealed.<b64url header>.<b64url payload>.<b64url signature>``.

The header carries ``alg: "ES256"`` and ``kid``. A ``kid`` that is a resource
URI names a P-256 JWK on the KBS; any other ``kid`` names a JWK file under the
sealed-secret directory (no path escape). The payload is a ``vault`` secret
(the plaintext is a resource of the named provider; ``kbs`` built in) or an
``envelope`` secret (a DEK wrapped by a KMS, data encrypted with the DEK).

Verification can be skipped only through the explicit configuration flag
``skip_sealed_secret_verification``, which logs a warning at start and at
every unseal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cdh.crypto import (
    CryptoError,
    aes_gcm_open,
    aes_gcm_seal,
    b64_std,
    b64url,
    strict_json,
    unwrap,
    verify_es256,
)
from cdh.errors import CdhError, SealedSecretError
from cdh.files import read_limited
from cdh.kbc import ResourceGetter, parse_resource_uri

__all__ = [
    "MAX_SEALED_SECRET_BYTES",
    "SEALED_SECRET_DIR",
    "EnvelopeSecret",
    "KmsProvider",
    "LocalKekProvider",
    "SealedSecret",
    "SecretUnsealer",
    "VaultSecret",
    "parse_sealed_secret",
]

log = logging.getLogger(__name__)

SEALED_SECRET_DIR = Path("/run/confidential-containers/cdh/sealed-secret")
MAX_SEALED_SECRET_BYTES = 1 << 20
MAX_KEY_FILE_BYTES = 64 << 10
_PREFIX = b"sealed."


class KmsProvider(Protocol):
    """An envelope-secret KMS: unwraps a data-encryption key."""

    async def decrypt(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, Any]) -> bytes: ...


@dataclass(frozen=True)
class VaultSecret:
    name: str
    provider: str
    provider_settings: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvelopeSecret:
    provider: str
    key_id: str
    encrypted_key: bytes
    encrypted_data: bytes
    wrap_type: str
    iv: bytes
    provider_settings: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"EnvelopeSecret(provider={self.provider!r}, key_id={self.key_id!r}, "
            f"wrap_type={self.wrap_type!r})"
        )


@dataclass(frozen=True)
class SealedSecret:
    """A parsed (not yet verified) sealed secret."""

    alg: str
    kid: str
    signing_input: bytes  # header_b64 + "." + payload_b64
    signature: bytes
    secret: VaultSecret | EnvelopeSecret


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SealedSecretError(f"{what} must be a JSON object")
    return v


def _req_str(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise SealedSecretError(f"{what} lacks the string field {key!r}")
    return v


def _parse_payload(untrusted: Any) -> VaultSecret | EnvelopeSecret:
    p = _obj(untrusted, "sealed secret payload")
    if p.get("version") != "0.1.0":
        raise SealedSecretError('sealed secret version must be "0.1.0"')
    kind = p.get("type")
    settings = _obj(p.get("provider_settings", {}), "provider_settings")
    annotations = _obj(p.get("annotations", {}), "annotations")
    if kind == "vault":
        extra = set(p) - {"version", "type", "name", "provider", "provider_settings", "annotations"}
        if extra:
            raise SealedSecretError(f"unknown fields in vault secret: {sorted(extra)}")
        return VaultSecret(
            _req_str(p, "name", "vault secret"),
            _req_str(p, "provider", "vault secret"),
            settings,
            annotations,
        )
    if kind == "envelope":
        extra = set(p) - {
            "version",
            "type",
            "provider",
            "key_id",
            "encrypted_key",
            "encrypted_data",
            "wrap_type",
            "iv",
            "provider_settings",
            "annotations",
        }
        if extra:
            raise SealedSecretError(f"unknown fields in envelope secret: {sorted(extra)}")
        try:
            return EnvelopeSecret(
                provider=_req_str(p, "provider", "envelope secret"),
                key_id=_req_str(p, "key_id", "envelope secret"),
                encrypted_key=b64_std(p.get("encrypted_key")),
                encrypted_data=b64_std(p.get("encrypted_data")),
                wrap_type=_req_str(p, "wrap_type", "envelope secret"),
                iv=b64_std(p.get("iv")),
                provider_settings=settings,
                annotations=annotations,
            )
        except CryptoError as exc:
            raise SealedSecretError(f"envelope secret: {exc}") from exc
    raise SealedSecretError('sealed secret type must be "vault" or "envelope"')


def parse_sealed_secret(untrusted_secret: bytes) -> SealedSecret:
    """Split and decode a sealed secret; checks shapes, not the signature."""
    if len(untrusted_secret) > MAX_SEALED_SECRET_BYTES:
        raise SealedSecretError(f"sealed secret larger than {MAX_SEALED_SECRET_BYTES} bytes")
    if not untrusted_secret.startswith(_PREFIX):
        raise SealedSecretError("not a sealed secret (must start with 'sealed.')")
    try:
        text = untrusted_secret[len(_PREFIX) :].decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise SealedSecretError("sealed secret is not ASCII") from exc
    parts = text.split(".")
    if len(parts) != 3:
        raise SealedSecretError("sealed secret must be sealed.<header>.<payload>.<signature>")
    h64, p64, s64 = parts
    try:
        header = _obj(strict_json(b64url(h64)), "sealed secret header")
        payload = strict_json(b64url(p64))
        signature = b64url(s64)
    except CryptoError as exc:
        raise SealedSecretError(f"malformed sealed secret: {exc}") from exc
    extra = set(header) - {"alg", "kid", "typ"}
    if extra:
        raise SealedSecretError(f"unknown fields in sealed secret header: {sorted(extra)}")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not isinstance(kid, str) or not kid:
        raise SealedSecretError("sealed secret header needs string alg and kid")
    return SealedSecret(alg, kid, f"{h64}.{p64}".encode(), signature, _parse_payload(payload))


def _jwk_point(untrusted_jwk: bytes) -> tuple[bytes, bytes]:
    """The ``(x, y)`` coordinates of an EC P-256 JWK (on the curve or not: :func:`verify_es256` checks)."""
    try:
        jwk = _obj(strict_json(untrusted_jwk, limit=MAX_KEY_FILE_BYTES), "verification key")
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            raise SealedSecretError("verification key must be an EC P-256 JWK")
        x, y = b64url(jwk.get("x", "")), b64url(jwk.get("y", ""))
    except CryptoError as exc:
        raise SealedSecretError(f"verification key is not a valid JWK: {exc}") from exc
    if len(x) != 32 or len(y) != 32:
        raise SealedSecretError("verification key coordinates must be 32 bytes")
    return x, y


def _read_key_file(key_dir: Path, kid: str) -> bytes:
    """Read ``key_dir/kid`` refusing absolute names, ``..`` and symlink escapes."""
    if not kid or kid.startswith("/") or "\x00" in kid or any(s in ("", ".", "..") for s in kid.split("/")):
        raise SealedSecretError(f"sealed secret kid {kid!r} is not a key name under the sealed-secret dir")
    base = key_dir.resolve()
    path = (base / kid).resolve()
    if not path.is_relative_to(base) or path == base:
        raise SealedSecretError(f"sealed secret kid {kid!r} escapes the sealed-secret dir")
    try:
        return read_limited(path, MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise SealedSecretError(f"cannot read key {kid!r} in {key_dir}: {exc.strerror}") from exc


class LocalKekProvider:
    """An envelope KMS backed by key-encryption keys in files (32 raw bytes each).

    ``key_id`` names a file under ``key_dir``; the wrapped DEK is
    ``nonce(12) || AES-256-GCM ciphertext || tag``. Meant for tests and
    single-host setups; the interface is the one cloud KMS plugins implement.
    """

    name = "localfs"

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir

    def _kek(self, key_id: str) -> bytes:
        kek = _read_key_file(self.key_dir, key_id)
        if len(kek) != 32:
            raise SealedSecretError(f"KEK {key_id!r} must be 32 bytes")
        return kek

    async def decrypt(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, Any]) -> bytes:
        if len(ciphertext) < 12 + 16:
            raise SealedSecretError("wrapped key too short")
        kek = self._kek(key_id)
        try:
            return aes_gcm_open(kek, ciphertext[:12], ciphertext[12:])
        except CryptoError as exc:
            raise SealedSecretError(f"KEK {key_id!r} cannot unwrap this key") from exc

    def encrypt(self, plaintext: bytes, key_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + aes_gcm_seal(self._kek(key_id), nonce, plaintext)


class SecretUnsealer:
    """Verifies and opens sealed secrets."""

    def __init__(
        self,
        resources: ResourceGetter,
        *,
        key_dir: Path = SEALED_SECRET_DIR,
        kms: Mapping[str, KmsProvider] | None = None,
        skip_verification: bool = False,
    ) -> None:
        self.resources = resources
        self.key_dir = key_dir
        self.kms = dict(kms or {})
        self.skip_verification = skip_verification
        if skip_verification:
            log.warning(
                "INSECURE: sealed secret signatures are NOT verified (skip_sealed_secret_verification)"
            )

    async def _verification_key(self, kid: str) -> tuple[bytes, bytes]:
        try:
            parse_resource_uri(kid)
            is_uri = True
        except CdhError:
            is_uri = False
        if is_uri:
            try:
                raw = await self.resources.get_resource(kid)
            except CdhError as exc:
                raise SealedSecretError(f"cannot fetch verification key {kid!r}: {exc}") from exc
        else:
            raw = _read_key_file(self.key_dir, kid)
        return _jwk_point(raw)

    async def verify(self, sealed: SealedSecret) -> None:
        if sealed.alg != "ES256":
            raise SealedSecretError(f"unsupported sealed secret alg {sealed.alg!r} (ES256 only)")
        if len(sealed.signature) != 64:
            raise SealedSecretError("ES256 signature must be 64 bytes")
        x, y = await self._verification_key(sealed.kid)
        try:
            valid = verify_es256(x, y, sealed.signing_input, sealed.signature)
        except CryptoError as exc:
            raise SealedSecretError("verification key is not a point on P-256") from exc
        if not valid:
            raise SealedSecretError(f"signature does not verify with key {sealed.kid!r}")

    async def unseal(self, untrusted_secret: bytes) -> bytes:
        sealed = parse_sealed_secret(untrusted_secret)
        if self.skip_verification:
            log.warning("INSECURE: unsealing a secret without verifying its signature")
        else:
            await self.verify(sealed)
        secret = sealed.secret
        if isinstance(secret, VaultSecret):
            return await self._vault(secret)
        return await self._envelope(secret)

    async def _vault(self, s: VaultSecret) -> bytes:
        if s.provider != "kbs":
            raise SealedSecretError(f"unknown vault provider {s.provider!r} (supported: kbs)")
        try:
            return await self.resources.get_resource(s.name)
        except CdhError as exc:
            raise SealedSecretError(f"vault secret {s.name!r}: {exc}") from exc

    async def _envelope(self, s: EnvelopeSecret) -> bytes:
        kms = self.kms.get(s.provider)
        if kms is None:
            known = ", ".join(sorted(self.kms)) or "none"
            raise SealedSecretError(f"unknown envelope provider {s.provider!r} (supported: {known})")
        dek = await kms.decrypt(s.encrypted_key, s.key_id, s.annotations)
        try:
            return unwrap(dek, s.iv, s.encrypted_data, s.wrap_type)
        except CryptoError as exc:
            raise SealedSecretError(f"envelope secret: {exc}") from exc
