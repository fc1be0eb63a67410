"""Errors of :mod:`image_pull.trust` and :mod:`image_pull.trust.signatures`.

PolicyRejected (image_pull.errors)
├── InvalidPolicy        containers-policy.json / registries.d / key material is malformed
└── SignatureRejected    no signature satisfies a requirement (missing, bad, other key/identity)
"""

from __future__ import annotations

from image_pull.errors import PolicyRejected

__all__ = ["InvalidPolicy", "SignatureRejected"]


class InvalidPolicy(PolicyRejected):
    """The policy, registries.d configuration or a key it names is malformed (fix the config)."""


class SignatureRejected(PolicyRejected):
    """A signature requirement is not satisfied by any signature of the image."""
