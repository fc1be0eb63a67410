"""The KBS error tree. Each class is one trustee ``Error`` variant: its name
is the RFC 7807 ``type`` suffix and it carries trustee's HTTP status (404 for
``PluginNotFound`` / ``InvalidRequestPath``, 401 for everything else)."""

from __future__ import annotations

import json

__all__ = [
    "ERROR_TYPE_PREFIX",
    "AdminAuthAccess",
    "AdminAuthInitialization",
    "AttestationError",
    "ConfigError",
    "InvalidRequestPath",
    "JweError",
    "KbsError",
    "ParsePolicyError",
    "PluginInternalError",
    "PluginNotFound",
    "PolicyDeny",
    "PolicyEngineError",
    "RvpsError",
    "SerdeError",
    "StorageError",
    "TokenNotFound",
    "TokenVerifierError",
]

ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


class KbsError(Exception):
    """Root of every KBS error. ``detail`` is what the client sees: no secrets in it.
    ``variant`` (the trustee error name) is the class name unless a subclass sets it."""

    status = 401
    variant = "KbsError"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "variant" not in cls.__dict__:
            cls.variant = cls.__name__

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def body(self) -> bytes:
        # serde_json::to_string: compact
        body = {"type": ERROR_TYPE_PREFIX + self.variant, "detail": self.detail}
        return json.dumps(body, separators=(",", ":")).encode()


class ConfigError(KbsError):
    """The configuration file is invalid (startup only; never sent to clients)."""


class StorageError(KbsError):
    """The storage backend failed."""

    variant = "PluginInternalError"


class AdminAuthInitialization(KbsError):
    pass


class AdminAuthAccess(KbsError):
    pass


class AttestationError(KbsError):
    pass


class InvalidRequestPath(KbsError):
    status = 404


class JweError(KbsError):
    pass


class PluginNotFound(KbsError):
    status = 404


class PluginInternalError(KbsError):
    pass


class PolicyDeny(KbsError):
    pass


class ParsePolicyError(KbsError):
    pass


class PolicyEngineError(KbsError):
    pass


class RvpsError(KbsError):
    pass


class SerdeError(KbsError):
    pass


class TokenNotFound(KbsError):
    pass


class TokenVerifierError(KbsError):
    pass
