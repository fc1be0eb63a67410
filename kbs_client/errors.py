"""The exception tree of :mod:`kbs_client`.

::

    KbsClientError
     +-- ProtocolError            malformed or unexpected KBS answer
     +-- KbsHttpError             KBS answered with an RFC 7807 error (status, type, detail)
     |    +-- AttestationRejected /attest (or /auth) refused: 401
     |    |    +-- VersionMismatch  the KBS speaks another protocol version
     |    +-- Unauthorized        token missing, expired or not trusted
     |    +-- PolicyDenied        the resource policy said no
     |    +-- ResourceNotFound    no such resource (trustee: 401 PluginInternalError, or 404)
     |    +-- AdminDenied         admin call refused (401 AdminAuth*)
     |    +-- PolicyInvalid       the KBS refused an uploaded policy (ParsePolicyError ...)
     +-- JweError                 JWE could not be decrypted or built
     +-- InvalidUri               not a valid kbs:// resource URI / path
     +-- TeeKeyError              bad TEE key material
     +-- TokenError               a JWT could not be parsed, signed or verified
     +-- TransportError           the HTTP request itself failed
"""

from __future__ import annotations

__all__ = [
    "AdminDenied",
    "AttestationRejected",
    "InvalidUri",
    "JweError",
    "KbsClientError",
    "KbsHttpError",
    "PolicyDenied",
    "PolicyInvalid",
    "ProtocolError",
    "ResourceNotFound",
    "TeeKeyError",
    "TokenError",
    "TransportError",
    "Unauthorized",
    "VersionMismatch",
]

ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


class KbsClientError(Exception):
    """Root of every error raised by :mod:`kbs_client`."""


class ProtocolError(KbsClientError):
    """The KBS answered something this client cannot interpret."""


class KbsHttpError(KbsClientError):
    """The KBS answered with an error status and (usually) an RFC 7807 body."""

    def __init__(self, status: int, error_type: str, detail: str) -> None:
        self.status = status
        #: the trustee variant name, e.g. ``PolicyDeny`` (prefix stripped); "" when absent
        self.error_type = error_type
        self.detail = detail
        super().__init__(f"KBS answered {status} {error_type or '(no type)'}: {detail}".rstrip(": "))


class AttestationRejected(KbsHttpError):
    """The KBS refused the handshake (/auth or /attest answered 401)."""


class VersionMismatch(AttestationRejected):
    """The KBS does not speak protocol 0.4.0 (trustee: 'Protocol Version Mismatch')."""


class Unauthorized(KbsHttpError):
    """No token, or the token is expired or not trusted (TokenNotFound, TokenVerifierError)."""


class PolicyDenied(KbsHttpError):
    """The KBS resource policy refused the request (PolicyDeny)."""


class ResourceNotFound(KbsHttpError):
    """The resource does not exist (trustee answers 401 PluginInternalError, or 404)."""


class AdminDenied(KbsHttpError):
    """An admin request was refused (AdminAuthAccess / AdminAuthInitialization)."""


class PolicyInvalid(KbsHttpError):
    """The KBS refused an uploaded policy (``ParsePolicyError`` and kin): fix the policy file."""


class JweError(KbsClientError):
    """A JWE could not be decrypted (wrong key, tampered) or built (unsupported key)."""


class InvalidUri(KbsClientError):
    """Not a valid ``kbs://`` resource URI or resource path."""


class TeeKeyError(KbsClientError):
    """TEE key material is malformed or uses an unsupported algorithm."""


class TokenError(KbsClientError):
    """A JWT (attestation token, admin token) is malformed, expired or its signature fails."""


class TransportError(KbsClientError):
    """The HTTP exchange with the KBS failed (connection, TLS, timeout).

    ``retryable`` is False for what no retry can heal (connection refused,
    TLS verification, a malformed URL, a request that cannot be built)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
