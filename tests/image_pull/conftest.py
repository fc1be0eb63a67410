"""Fixtures for image_pull tests: a real docker-registry (see tests/support/registry.py)."""

from tests.support.registry import registry, tls_registry, token_registry  # noqa: F401
