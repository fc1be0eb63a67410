"""Signature formats and sources: simple signing (GPG), cosign, registries.d lookaside."""

__all__: list[str] = []
