"""Extension points the puller calls: signature policy and layer decryption.

Implemented by :mod:`image_pull.trust` (policy evaluation, signatures from
:mod:`image_pull.trust.signatures`) and :mod:`image_pull.ocicrypt` (layer
decryption), called from :mod:`image_pull.puller`.

* :class:`PolicyCheck` is what ``PullerConfig.signature_policy`` holds (e.g. a
  parsed :class:`image_pull.trust.TrustPolicy`): its ``check`` gets a
  :class:`PolicyContext`, everything a signature check needs. It runs after the
  manifest and config are verified and **before any layer becomes visible in
  the bundle**, for cached images too.
* :class:`LayerDecryptor` wraps the downloaded (verified-as-it-streams)
  ciphertext stream of one encrypted layer and returns a plaintext stream; it
  runs in the layer's worker thread. It must verify integrity (HMAC) by EOF
  and raise :class:`~image_pull.errors.DecryptionError` otherwise; the layer is
  committed only after the wrapped stream reached EOF without error.
* :class:`KeyUnwrapper` is the ocicrypt key-provider hook (CDH's UnWrapKey).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from image_pull.manifest import Manifest
from image_pull.reference import Reference
from image_pull.registry import RegistryClient
from image_pull.stream import Readable

__all__ = ["KeyUnwrapper", "LayerDecryptor", "PolicyCheck", "PolicyContext"]


class KeyUnwrapper(Protocol):
    async def unwrap_key(self, annotation: bytes) -> bytes:
        """Return the ocicrypt private layer options (``optsdata``) for one provider annotation."""
        ...


@dataclass(frozen=True)
class PolicyContext:
    reference: Reference  # the reference being pulled (after registries.conf rewriting)
    original_reference: str  # what the caller asked for
    manifest_digest: str  # platform manifest digest
    index_digest: str | None  # image index digest when the tag named an index
    manifest: Manifest
    manifest_bytes: bytes
    registry: RegistryClient  # for fetching signatures (cosign .sig tags, registry extension, lookaside)


class PolicyCheck(Protocol):
    async def check(self, ctx: PolicyContext) -> object:
        """Return (anything) to accept; raise PolicyRejected to reject."""
        ...


class LayerDecryptor(Protocol):
    def __call__(self, ciphertext: Readable) -> Readable: ...
