"""Trusted images: containers-policy.json evaluation over simple signing (GPG) and cosign.

Entry point: :class:`TrustPolicy` (``TrustPolicy(policy_bytes, ...)`` parses the
policy, so a bad one fails there; ``await policy.check(ctx)`` runs per pull),
given to :class:`image_pull.puller.ImagePuller` as ``PullerConfig.signature_policy``.
Signature formats and where they come from: :mod:`image_pull.trust.signatures`.
"""

from image_pull.trust.errors import InvalidPolicy, SignatureRejected
from image_pull.trust.evaluate import Accepted, TrustPolicy
from image_pull.trust.policy import Policy

__all__ = ["Accepted", "InvalidPolicy", "Policy", "SignatureRejected", "TrustPolicy"]
