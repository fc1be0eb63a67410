"""Common fixtures for the SNP tests: real vectors from tests/fixtures/evidence/snp and
a synthetic AMD-shaped PKI (see synth.py) for cases no real vector covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.report import Product
from tests.support.vectors import evidence, vector

from .synth import SynthPki

SNP_FIXTURES = evidence("snp")


@pytest.fixture(scope="session")
def fx() -> Path:
    """The SNP vectors folder (a missing folder fails, it never skips)."""
    return SNP_FIXTURES


@pytest.fixture(scope="session")
def trust() -> TrustStore:
    """Built-in roots, shared so the signature cache is warm across tests."""
    return TrustStore.builtin()


@pytest.fixture(scope="session")
def milan_vcek(fx: Path) -> EndorsementCert:
    return EndorsementCert.from_bytes(vector("snp", "trustee/test-vcek.der").read_bytes())


@pytest.fixture(scope="session")
def pki_milan() -> SynthPki:
    return SynthPki.create(Product.MILAN)


@pytest.fixture(scope="session")
def pki_turin() -> SynthPki:
    return SynthPki.create(Product.TURIN)
