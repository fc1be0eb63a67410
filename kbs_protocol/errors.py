"""The exception tree of :mod:`kbs_protocol`: what the wire code itself rejects.

::

    KbsProtocolError
     +-- JweError      a JWE could not be decrypted (wrong key, tampered) or built
     +-- TeeKeyError   TEE key material is malformed or uses an unsupported algorithm
     +-- TokenError    a JWT is malformed, expired or its signature fails
     +-- InvalidUri    not a valid ``kbs://`` resource URI or resource path

:mod:`kbs_client`'s root :class:`kbs_client.errors.KbsClientError` derives from
:class:`KbsProtocolError`, so one ``except KbsProtocolError`` catches everything
a KBS exchange can raise on the client side.
"""

from __future__ import annotations

__all__ = [
    "ERROR_TYPE_PREFIX",
    "InvalidUri",
    "JweError",
    "KbsProtocolError",
    "TeeKeyError",
    "TokenError",
]

#: the RFC 7807 ``type`` of every KBS error answer is this prefix + the trustee variant name
ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


class KbsProtocolError(Exception):
    """Root of every error raised by :mod:`kbs_protocol`."""


class JweError(KbsProtocolError):
    """A JWE could not be decrypted (wrong key, tampered) or built (unsupported key)."""


class TeeKeyError(KbsProtocolError):
    """TEE key material is malformed or uses an unsupported algorithm."""


class TokenError(KbsProtocolError):
    """A JWT (attestation token, admin token) is malformed, expired or its signature fails."""


class InvalidUri(KbsProtocolError):
    """Not a valid ``kbs://`` resource URI or resource path."""
