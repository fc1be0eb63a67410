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
    """Root of every KBS error. ``detail`` is what the client sees: no secrets in it."""

    status = 401
    variant = "KbsError"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def body(self) -> bytes:
        return json.dumps({"type": ERROR_TYPE_PREFIX + self.variant, "detail": self.detail}).encode()


class ConfigError(KbsError):
    """The configuration file is invalid (startup only; never sent to clients)."""

    variant = "ConfigError"


class StorageError(KbsError):
    """The storage backend failed."""

    variant = "PluginInternalError"


class AdminAuthInitialization(KbsError):
    variant = "AdminAuthInitialization"


class AdminAuthAccess(KbsError):
    variant = "AdminAuthAccess"


class AttestationError(KbsError):
    variant = "AttestationError"


class InvalidRequestPath(KbsError):
    variant = "InvalidRequestPath"
    status = 404


class JweError(KbsError):
    variant = "JweError"


class PluginNotFound(KbsError):
    variant = "PluginNotFound"
    status = 404


class PluginInternalError(KbsError):
    variant = "PluginInternalError"


class PolicyDeny(KbsError):
    variant = "PolicyDeny"


class ParsePolicyError(KbsError):
    variant = "ParsePolicyError"


class PolicyEngineError(KbsError):
    variant = "PolicyEngineError"


class RvpsError(KbsError):
    variant = "RvpsError"


class SerdeError(KbsError):
    variant = "SerdeError"


class TokenNotFound(KbsError):
    variant = "TokenNotFound"


class TokenVerifierError(KbsError):
    variant = "TokenVerifierError"
