"""The KBS error tree: :class:`KbsError` is the root of every error the KBS
raises. Each class maps to one trustee ``Error`` variant: :attr:`KbsError.variant`
is the RFC 7807 ``type`` suffix (the class name, unless the class names it
explicitly because its own name says more, e.g. :class:`KbsAttestationError`
is trustee's ``AttestationError``) and the class carries trustee's HTTP status
(404 for ``PluginNotFound`` / ``InvalidRequestPath``, 401 for everything else)."""

from __future__ import annotations

import json

from kbs_protocol.errors import ERROR_TYPE_PREFIX

__all__ = [
    "ERROR_TYPE_PREFIX",
    "AdminAccessDenied",
    "AdminAuthAccess",
    "AdminAuthInitialization",
    "InvalidRequestPath",
    "KbsAttestationError",
    "KbsConfigError",
    "KbsError",
    "KbsJweError",
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

    #: trustee's text for this variant when its Display shows no source (``error.rs``)
    trustee_text: str | None = None
    #: trustee's Display prefix for variants that show their source
    trustee_prefix: str | None = None

    def trustee_detail(self) -> str:
        """The ``detail`` as trustee v0.21 words it (``kbs/src/error.rs`` Display): the fixed
        text of variants that hide their source, else our text under trustee's prefix."""
        if self.trustee_text is not None:
            return self.trustee_text
        if self.trustee_prefix is not None and not self.detail.startswith(self.trustee_prefix):
            return self.trustee_prefix + self.detail
        return self.detail

    def body(self, *, trustee_texts: bool = False) -> bytes:
        """The RFC 7807 body; ``trustee_texts``: ``[compatibility] detailed_error_texts = false``."""
        detail = self.trustee_detail() if trustee_texts else self.detail
        # serde_json::to_string: compact
        body = {"type": ERROR_TYPE_PREFIX + self.variant, "detail": detail}
        return json.dumps(body, separators=(",", ":")).encode()


class KbsConfigError(KbsError):
    """The configuration file is invalid (startup only; never sent to clients)."""

    variant = "ConfigError"


class StorageError(KbsError):
    """The storage backend failed."""

    variant = "PluginInternalError"
    trustee_text = "Plugin internal error"


class AdminAuthInitialization(KbsError):
    trustee_prefix = "failed to initialize [admin] configuration: "


class AdminAuthAccess(KbsError):
    pass


class AdminAccessDenied(KbsError):
    """An admin request is refused by ``[admin]`` (no, expired or untrusted token, role not
    allowed); the detail is safe to show. The server answers it as ``AdminAuthAccess``."""

    variant = "AdminAuthAccess"


class KbsAttestationError(KbsError):
    variant = "AttestationError"
    trustee_prefix = "Attestation error: "


class InvalidRequestPath(KbsError):
    status = 404


class KbsJweError(KbsError):
    variant = "JweError"
    trustee_text = "JWE failed"


class PluginNotFound(KbsError):
    status = 404


class PluginInternalError(KbsError):
    trustee_text = "Plugin internal error"


class PolicyDeny(KbsError):
    trustee_text = "Access denied by policy"


class ParsePolicyError(KbsError):
    trustee_prefix = "Failed to parse policy: "


class PolicyEngineError(KbsError):
    trustee_prefix = "Policy engine error: "


class RvpsError(KbsError):
    trustee_prefix = "RVPS configuration failed: "


class SerdeError(KbsError):
    trustee_text = "Serialize/Deserialize failed"


class TokenNotFound(KbsError):
    trustee_text = "Attestation Token not found"


class TokenVerifierError(KbsError):
    trustee_text = "Token Verifier error"
