"""ocicrypt layer decryption (JWE recipients, key-provider protocol, AES-256-CTR + HMAC-SHA256)."""

from image_pull.ocicrypt.errors import IntegrityError, InvalidEncryptedLayer, KeyUnavailable
from image_pull.ocicrypt.jwe import jwe_decrypt, load_private_key
from image_pull.ocicrypt.layer import DecryptingReader, LayerDecrypter, LayerKey

__all__ = [
    "DecryptingReader",
    "IntegrityError",
    "InvalidEncryptedLayer",
    "KeyUnavailable",
    "LayerDecrypter",
    "LayerKey",
    "jwe_decrypt",
    "load_private_key",
]
