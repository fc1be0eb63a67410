"""The sample TEEs' KBS-side verifiers (:mod:`attestation.sample.kbs`) and the
KBS verifier registry that serves them only when enabled."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import ConfigFileError, EvidenceFormatError, VerificationError
from attestation.sample import SampleAttester, SampleDeviceAttester
from attestation.sample.kbs import SampleDeviceVerifier, SampleVerifier
from attestation.snp.kbs import SnpVerifier
from attestation.verifier import EvidenceVerifier
from kbs.errors import KbsConfigError, KbsError
from kbs.verifiers import VERIFIERS, UnsupportedTee, VerifierRegistry

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DIGEST = bytes(range(48))


async def test_sample_round_trip_gives_trustee_claims() -> None:
    evidence = await SampleAttester().get_evidence(DIGEST)
    v = SampleVerifier()
    assert isinstance(v, EvidenceVerifier)
    claims = v.verify(evidence, expected_report_data=DIGEST, expected_init_data_hash=b"\x07" * 32, now=NOW)
    assert claims == {
        "svn": "1",
        "report_data": base64.b64encode(DIGEST).decode(),
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "debug": False,
        "init_data": base64.b64encode(b"\x07" * 32).decode(),
    }
    assert "init_data" not in v.verify(
        evidence, expected_report_data=DIGEST, expected_init_data_hash=None, now=NOW
    )


async def test_sampledevice_round_trip() -> None:
    evidence = await SampleDeviceAttester().get_evidence(DIGEST[:32])
    claims = SampleDeviceVerifier().verify(
        evidence, expected_report_data=DIGEST[:32], expected_init_data_hash=None, now=NOW
    )
    assert claims == {"svn": "2", "report_data": base64.b64encode(DIGEST[:32]).decode()}


@pytest.mark.parametrize(
    ("evidence", "error", "match"),
    [
        ([], EvidenceFormatError, "must be a JSON object"),
        ({"svn": "1", "report_data": "", "x": 1}, EvidenceFormatError, "unknown fields"),
        ({"svn": 1, "report_data": ""}, EvidenceFormatError, "string svn"),
        ({"svn": "1", "report_data": "not base64!"}, EvidenceFormatError, "not standard base64"),
        ({"svn": "1", "report_data": "é"}, EvidenceFormatError, "not standard base64"),
        (
            {"svn": "1", "report_data": base64.b64encode(b"other").decode()},
            VerificationError,
            "does not match",
        ),
        ({"svn": "1"}, VerificationError, "does not match"),
    ],
)
def test_bad_sample_evidence_is_refused(evidence: object, error: type[Exception], match: str) -> None:
    for v in (SampleVerifier(), SampleDeviceVerifier()):
        with pytest.raises(error, match=match):
            v.verify(evidence, expected_report_data=DIGEST, expected_init_data_hash=None, now=NOW)


def test_registry_serves_dev_tees_only_when_enabled() -> None:
    off = VerifierRegistry()
    assert off.disabled("sample") and off.dev_enabled == frozenset()
    with pytest.raises(UnsupportedTee, match="not enabled"):
        off.get("sample")
    on = VerifierRegistry(dev_verifiers=("sample",))
    assert isinstance(on.get("sample"), SampleVerifier)
    with pytest.raises(UnsupportedTee, match="not enabled"):
        on.get("sampledevice")
    with pytest.raises(ValueError, match="unknown dev verifiers"):
        VerifierRegistry(dev_verifiers=("snp",))


def test_registry_refuses_unknown_and_unconfigured_tees() -> None:
    reg = VerifierRegistry()
    assert issubclass(UnsupportedTee, KbsError)
    with pytest.raises(UnsupportedTee, match="no verifier"):
        reg.get("hygondcu")
    # se needs its key material: refused as unsupported without trying to build it
    with pytest.raises(UnsupportedTee, match=r"verifier_config\.se"):
        reg.get("se")
    with pytest.raises(UnsupportedTee, match=r"verifier_config\.se"):
        reg.supplemental_challenge("se", "")
    assert reg.supplemental_challenge("snp", "") is None
    # unconfigured TEEs are built on first use, once
    snp = reg.get("snp")
    assert isinstance(snp, SnpVerifier) and reg.get("snp") is snp
    assert set(VERIFIERS) >= {"snp", "tdx", "nvidia", "se"}


def test_a_bad_verifier_config_fails_at_start_with_its_cause(tmp_path: Path) -> None:
    """A configured verifier is built with the registry: a bad table is a start-up
    KbsConfigError naming the table, not an 'unsupported TEE' later."""
    with pytest.raises(KbsConfigError, match=r"verifier_config\.snp: .*check_crl") as info:
        VerifierRegistry(options={"snp": {"check_crl": True}})
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(KbsConfigError, match=r"verifier_config\.tdx") as info:
        VerifierRegistry(options={"tdx": {"root_ca_pem": str(tmp_path / "absent.pem")}})
    assert isinstance(info.value.__cause__, ConfigFileError)  # naming the file, the OSError kept
    assert isinstance(info.value.__cause__.__cause__, FileNotFoundError)
    with pytest.raises(KbsConfigError, match=r"verifier_config\.snp"):
        VerifierRegistry(options={"snp": {"no_such_option": 1}})
    configured = VerifierRegistry(options={"snp": {"required_vmpl": None}})
    assert isinstance(configured.get("snp"), SnpVerifier)
