"""pytest fixtures for the NVIDIA tests."""

from __future__ import annotations

import pytest

from attestation.nvidia.verify import TrustAnchors


@pytest.fixture(scope="session")
def anchors() -> TrustAnchors:
    return TrustAnchors.nvidia()
