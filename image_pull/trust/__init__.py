"""Trusted images: containers-policy.json evaluation over simple signing (GPG) and cosign.

Entry point: :class:`TrustPolicy` (``await TrustPolicy(policy_bytes, ...).check(ctx)``),
wired into :class:`image_pull.puller.ImagePuller` through ``PullerConfig.signature_policy``.
``TrustPolicy``/``Accepted`` are imported lazily (``image_pull.signatures`` imports
this package's errors and policy model).
"""

from typing import Any

from image_pull.trust.errors import InvalidPolicy, SignatureRejected
from image_pull.trust.policy import Policy

__all__ = ["Accepted", "InvalidPolicy", "Policy", "SignatureRejected", "TrustPolicy"]


def __getattr__(name: str) -> Any:
    if name in ("Accepted", "TrustPolicy"):
        from image_pull.trust import evaluate

        return getattr(evaluate, name)
    raise AttributeError(name)
