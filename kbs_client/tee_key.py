"""The TEE key pair the KBS encrypts resources to (``tee-pubkey``)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kbs_protocol.errors import TeeKeyError
from kbs_protocol.jwe import ALG_ECDH_ES_A256KW, ALG_RSA1_5, ALG_RSA_OAEP_256, TeePubKey, decrypt
from kbs_protocol.jws import public_key_to_jwk

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "TeeKeyPair"]

DEFAULT_ALGORITHM = "ECDH-ES+A256KW-P256"
ALGORITHMS = ("ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256", "RSA1_5")
#: largest PEM accepted by :meth:`TeeKeyPair.from_pem`
MAX_PEM_BYTES = 64 * 1024

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class TeeKeyPair:
    """An EC P-256 / P-521 (ECDH-ES+A256KW) or RSA (RSA-OAEP-256, RSA1_5) key pair."""

    __slots__ = ("_alg", "_key", "_pub")

    def __init__(self, key: PrivateKey, alg: str) -> None:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in ("secp256r1", "secp521r1"):
                raise TeeKeyError("EC TEE keys must be P-256 or P-521")
            if alg != ALG_ECDH_ES_A256KW:
                raise TeeKeyError("EC TEE keys use ECDH-ES+A256KW")
        elif isinstance(key, rsa.RSAPrivateKey):
            if alg not in (ALG_RSA_OAEP_256, ALG_RSA1_5):
                raise TeeKeyError("RSA TEE keys use RSA-OAEP-256 or RSA1_5")
            if key.key_size < 2048:
                raise TeeKeyError("RSA TEE keys must have at least 2048 bits")
        else:
            raise TeeKeyError("unsupported TEE key type")
        self._key: PrivateKey = key
        self._alg = alg
        # kty/crv/x/y or kty/n/e as any public key's JWK, plus the algorithm
        self._pub = TeePubKey.from_json({**public_key_to_jwk(key.public_key()), "alg": alg})

    @classmethod
    def generate(cls, algorithm: str = DEFAULT_ALGORITHM) -> TeeKeyPair:
        """A fresh key; ``algorithm`` is one of :data:`ALGORITHMS`."""
        if algorithm == "ECDH-ES+A256KW-P256":
            return cls(ec.generate_private_key(ec.SECP256R1()), ALG_ECDH_ES_A256KW)
        if algorithm == "ECDH-ES+A256KW-P521":
            return cls(ec.generate_private_key(ec.SECP521R1()), ALG_ECDH_ES_A256KW)
        if algorithm in (ALG_RSA_OAEP_256, ALG_RSA1_5):
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm)
        raise TeeKeyError(f"unknown TEE key algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")

    @classmethod
    def from_pem(cls, pem: bytes | str, *, rsa_alg: str = ALG_RSA_OAEP_256) -> TeeKeyPair:
        """Load an EC PKCS#8 / SEC1 or RSA PKCS#1 / PKCS#8 private key PEM.

        RSA keys are exported with ``rsa_alg`` (kbs-client: RSA-OAEP-256)."""
        data = pem.encode() if isinstance(pem, str) else pem
        if len(data) > MAX_PEM_BYTES:
            raise TeeKeyError("TEE key PEM too large")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise TeeKeyError("not an unencrypted PEM private key") from exc
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cls(key, ALG_ECDH_ES_A256KW)
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(key, rsa_alg)
        raise TeeKeyError("TEE key must be EC (P-256/P-521) or RSA")

    @property
    def algorithm(self) -> str:
        """The JWK ``alg`` (``ECDH-ES+A256KW``, ``RSA-OAEP-256`` or ``RSA1_5``)."""
        return self._alg

    @property
    def pubkey(self) -> TeePubKey:
        return self._pub

    def public_jwk(self) -> dict[str, str]:
        """The ``tee-pubkey`` JWK exactly as guest-components sends it."""
        return self._pub.to_jwk()

    def private_pem(self) -> str:
        """EC keys as PKCS#8, RSA keys as PKCS#1 (what AA's GetToken returns)."""
        fmt = (
            serialization.PrivateFormat.PKCS8
            if isinstance(self._key, ec.EllipticCurvePrivateKey)
            else serialization.PrivateFormat.TraditionalOpenSSL
        )
        return self._key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()

    def decrypt(self, untrusted_jwe: Any) -> bytes:
        """Decrypt a KBS resource JWE (dict or JSON text)."""
        return decrypt(untrusted_jwe, self._key)

    def __repr__(self) -> str:
        return f"TeeKeyPair(alg={self._alg!r}, kty={self._pub.kty!r})"
