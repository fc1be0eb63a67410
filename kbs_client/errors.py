"""The exception tree of :mod:`kbs_client`.

::

    KbsClientError
     +-- ProtocolError            malformed or unexpected KBS answer
     |    +-- TooLarge            the answer or the resource is over the client's limit
     +-- KbsHttpError             KBS answered with an RFC 7807 error (status, type, detail)
     |    +-- AttestationRejected /attest (or /auth) refused: 401
     |    |    +-- VersionMismatch  the KBS speaks another protocol version
     |    +-- Unauthorized        token missing, expired or not trusted
     |    +-- PolicyDenied        the resource policy said no
     |    +-- ResourceNotFound    no such resource (trustee: 401 PluginInternalError, or 404)
     |    +-- AdminDenied         admin call refused (401 AdminAuth*)
     |    +-- PolicyInvalid       the KBS refused an uploaded policy (ParsePolicyError ...)
     +-- TransportError           the HTTP request itself failed

:class:`KbsClientError` derives from :class:`kbs_protocol.errors.KbsProtocolError`:
the wire code's own errors (``JweError``, ``TeeKeyError``, ``TokenError``,
``InvalidUri``) live in :mod:`kbs_protocol.errors`.
"""

from __future__ import annotations

from kbs_protocol.errors import KbsProtocolError

__all__ = [
    "AdminDenied",
    "AttestationRejected",
    "KbsClientError",
    "KbsHttpError",
    "PolicyDenied",
    "PolicyInvalid",
    "ProtocolError",
    "ResourceNotFound",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "VersionMismatch",
]


class KbsClientError(KbsProtocolError):
    """Root of every error raised by :mod:`kbs_client`."""


class ProtocolError(KbsClientError):
    """The KBS answered something this client cannot interpret."""


class TooLarge(ProtocolError):
    """The KBS answer, or the resource it carries, is larger than the client accepts."""


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


class TransportError(KbsClientError):
    """The HTTP exchange with the KBS failed (connection, TLS, timeout).

    ``retryable`` is False for what no retry can heal (connection refused,
    TLS verification, a malformed URL, a request that cannot be built)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
