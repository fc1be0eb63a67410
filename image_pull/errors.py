"""Exception tree of the image_pull package.

Everything the package raises on purpose derives from :class:`ImagePullError`.
Messages are short, stable, say what to do, and never contain credentials.

    ImagePullError
    ├── InvalidReference      bad image reference
    ├── RegistryError         transport/protocol failure talking to a registry
    │   ├── AuthError         401/403, bad credentials, token dance failed
    │   ├── NotFound          manifest/blob/repository unknown
    │   ├── RateLimited       429 after retries
    │   ├── TooLarge          a body exceeded its size limit
    │   └── TransferError     a body broke off, stalled or trickled
    ├── ManifestError         malformed/ambiguous manifest, index or config
    │   └── NoMatchingPlatform
    ├── DigestMismatch        content does not hash to its descriptor
    ├── PolicyRejected        registries.conf block or signature policy rejection
    ├── DecryptionError       ocicrypt layer decryption failed
    ├── UnpackError           layer could not be unpacked (image_pull.unpack subclasses it)
    ├── StoreError            layer store / disk problem
    │   └── InsufficientSpace
    ├── BundleError           rootfs/config.json creation failed
    └── PullTimeout           the pull-wide deadline passed
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BundleError",
    "DecryptionError",
    "DigestMismatch",
    "ImagePullError",
    "InsufficientSpace",
    "InvalidReference",
    "ManifestError",
    "NoMatchingPlatform",
    "NotFound",
    "PolicyRejected",
    "PullTimeout",
    "RateLimited",
    "RegistryError",
    "StoreError",
    "TooLarge",
    "TransferError",
    "UnpackError",
]


class ImagePullError(Exception):
    """Root of every error raised by image_pull on purpose."""


class InvalidReference(ImagePullError):
    """The image reference is not a valid docker reference."""


class RegistryError(ImagePullError):
    """The registry could not be reached or answered outside the protocol."""


class AuthError(RegistryError):
    """Authentication with the registry failed (wrong or missing credentials)."""


class NotFound(RegistryError):
    """The registry does not know the repository, manifest or blob."""


class RateLimited(RegistryError):
    """The registry kept answering 429 Too Many Requests."""


class TooLarge(RegistryError):
    """A response body exceeded its size limit."""


class TransferError(RegistryError):
    """A response body broke off, stalled or arrived too slowly (retried before it is raised)."""


class ManifestError(ImagePullError):
    """A manifest, index or image config is malformed or unsupported."""


class NoMatchingPlatform(ManifestError):
    """An image index has no manifest for the requested platform."""


class DigestMismatch(ImagePullError):
    """Content does not match the digest (or size) that describes it."""


class PolicyRejected(ImagePullError):
    """Registry configuration or signature policy rejected the image."""


class DecryptionError(ImagePullError):
    """An encrypted layer could not be decrypted."""


class UnpackError(ImagePullError):
    """A layer could not be unpacked."""


class StoreError(ImagePullError):
    """The layer store could not be used."""


class InsufficientSpace(StoreError):
    """Not enough free disk space for the pull."""


class BundleError(ImagePullError):
    """The bundle (rootfs mount, config.json) could not be created."""


class PullTimeout(ImagePullError):
    """The pull did not finish before its deadline."""
