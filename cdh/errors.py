"""The exception root of :mod:`cdh` and its small tree.

Messages are short and never contain secret material (resource bytes, keys,
plaintexts); the RPC layer turns them into ``"[CDH] [ERROR]: <message>"``.
"""

from __future__ import annotations

__all__ = [
    "CdhConfigError",
    "CdhError",
    "ImagePullFailed",
    "KeyProviderError",
    "NoSuchResource",
    "ResourceError",
    "SealedSecretError",
    "SecureMountError",
    "TokenUnavailable",
]


class CdhError(Exception):
    """Root of every error raised by :mod:`cdh`."""


class CdhConfigError(CdhError):
    """``cdh.toml``, the kernel command line or the environment is invalid."""


class ResourceError(CdhError):
    """A resource could not be fetched (bad URI, KBS refused, decryption failed)."""


class NoSuchResource(ResourceError):
    """The KBS or the offline store has no such resource."""


class TokenUnavailable(ResourceError):
    """The Attestation Agent could not provide a KBS token."""


class SealedSecretError(CdhError):
    """A sealed secret is malformed, its signature is wrong, or its provider failed."""


class SecureMountError(CdhError):
    """A secure mount request is invalid or a step of it failed (state rolled back)."""


class KeyProviderError(CdhError):
    """An ocicrypt key-provider request could not be answered."""


class ImagePullFailed(CdhError):
    """PullImage failed (the pull itself or its measurement)."""
