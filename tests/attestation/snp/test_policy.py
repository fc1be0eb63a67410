"""Validation policy: a separate step after verification."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.errors import SnpFormatError, SnpPolicyViolation
from attestation.snp.policy import SnpPolicy, TcbFloor, validate
from attestation.snp.report import AttestationReport, Product, SigningKey, TcbVersion
from attestation.snp.verify import VerifiedReport, verify_report

from .synth import NOW, SynthPki, build_report, endorsement, sign

#: recorded vectors are verified as of a fixed date inside every VCEK's validity (Milan 2023-2030,
#: Genoa 2025-2032), so the suite does not start failing the day a recorded certificate expires
TODAY = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def milan(fx: Path, trust: TrustStore) -> VerifiedReport:
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    return verify_report(
        r, EndorsementCert.from_bytes((fx / "trustee/test-vcek.der").read_bytes()), trust=trust, now=TODAY
    )


def _synth(pki: SynthPki, **kw: object) -> VerifiedReport:
    tcb = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115)
    key, der = pki.leaf(tcb=tcb, hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(sign(build_report(tcb=tcb, **kw), key))  # type: ignore[arg-type]
    return verify_report(report, endorsement(der), trust=pki.trust(), now=NOW)


def test_default_policy_accepts_a_normal_guest(milan: VerifiedReport) -> None:
    assert validate(milan, SnpPolicy()) is milan


def test_debug_and_migration_agent_forbidden_by_default(pki_milan: SynthPki) -> None:
    debug = _synth(pki_milan, policy=0x30000 | (1 << 19))
    assert debug.claims()["debug"] is True  # authentic all the same
    with pytest.raises(SnpPolicyViolation, match="DEBUG"):
        validate(debug, SnpPolicy())
    validate(debug, SnpPolicy(allow_debug=True))
    ma = _synth(pki_milan, policy=0x30000 | (1 << 18))
    with pytest.raises(SnpPolicyViolation, match="migration agent"):
        validate(ma, SnpPolicy())
    validate(ma, SnpPolicy(allow_migration_agent=True))


def test_min_tcb(milan: VerifiedReport) -> None:
    validate(milan, SnpPolicy(min_tcb=TcbFloor(bootloader=3, snp=8, microcode=115)))
    with pytest.raises(SnpPolicyViolation, match="microcode=115 is below the minimum 116"):
        validate(milan, SnpPolicy(min_tcb=TcbFloor(microcode=116)))
    with pytest.raises(SnpPolicyViolation, match="snp=8"):
        validate(milan, SnpPolicy(min_tcb=TcbFloor(snp=9)))


def test_measurements_vmpl_host_and_report_data(milan: VerifiedReport) -> None:
    r = milan.report
    validate(milan, SnpPolicy(measurements=frozenset({r.measurement, b"\0" * 48})))
    with pytest.raises(SnpPolicyViolation, match="not an allowed reference value"):
        validate(milan, SnpPolicy(measurements=frozenset({b"\1" * 48})))
    validate(milan, SnpPolicy(vmpl=0))
    with pytest.raises(SnpPolicyViolation, match="VMPL 0, the policy requires VMPL 1"):
        validate(milan, SnpPolicy(vmpl=1))
    validate(milan, SnpPolicy(host_data=r.host_data))
    with pytest.raises(SnpPolicyViolation, match="HOST_DATA"):
        validate(milan, SnpPolicy(host_data=b"\1" * 32))
    validate(milan, SnpPolicy(report_data=r.report_data))
    with pytest.raises(SnpPolicyViolation, match="REPORT_DATA"):
        validate(milan, SnpPolicy(report_data=b"\1" * 64))


def test_products_keys_svn_firmware(milan: VerifiedReport) -> None:
    validate(milan, SnpPolicy(products=frozenset({Product.MILAN}), signing_keys=frozenset({SigningKey.VCEK})))
    with pytest.raises(SnpPolicyViolation, match="Milan is not allowed"):
        validate(milan, SnpPolicy(products=frozenset({Product.GENOA})))
    with pytest.raises(SnpPolicyViolation, match="signed by a VCEK are not allowed"):
        validate(milan, SnpPolicy(signing_keys=frozenset({SigningKey.VLEK})))
    validate(milan, SnpPolicy(min_guest_svn=4, min_firmware=(1, 52)))
    with pytest.raises(SnpPolicyViolation, match="GUEST_SVN 4"):
        validate(milan, SnpPolicy(min_guest_svn=5))
    with pytest.raises(SnpPolicyViolation, match=r"1\.52\.4 is older than 1\.55"):
        validate(milan, SnpPolicy(min_firmware=(1, 55)))


def test_id_block_fields(milan: VerifiedReport) -> None:
    r = milan.report
    validate(
        milan,
        SnpPolicy(id_key_digests=frozenset({r.id_key_digest}), family_id=r.family_id, image_id=r.image_id),
    )
    with pytest.raises(SnpPolicyViolation, match="ID_KEY_DIGEST"):
        validate(milan, SnpPolicy(id_key_digests=frozenset({b"\1" * 48})))
    with pytest.raises(SnpPolicyViolation, match="AUTHOR_KEY_DIGEST"):  # AUTHOR_KEY_EN is 0 in this report
        validate(milan, SnpPolicy(author_key_digests=frozenset({r.author_key_digest})))
    with pytest.raises(SnpPolicyViolation, match="FAMILY_ID"):
        validate(milan, SnpPolicy(family_id=b"\0" * 16))
    with pytest.raises(SnpPolicyViolation, match="IMAGE_ID"):
        validate(milan, SnpPolicy(image_id=b"\0" * 16))
    p = SnpPolicy.from_json(
        json.dumps(
            {
                "id_key_digests": [r.id_key_digest.hex()],
                "family_id": r.family_id.hex(),
                "image_id": r.image_id.hex(),
            }
        )
    )
    validate(milan, p)


def test_policy_json(milan: VerifiedReport) -> None:
    r = milan.report
    doc = {
        "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "measurements": [r.measurement.hex()],
        "allow_debug": False,
        "vmpl": 0,
        "host_data": r.host_data.hex(),
        "report_data": r.report_data[:32].hex(),
        "min_guest_svn": 1,
        "min_firmware": "1.51",
        "products": ["Milan"],
        "signing_keys": ["vcek"],
    }
    p = SnpPolicy.from_json(json.dumps(doc))
    assert p.report_data == r.report_data  # zero-padded to 64
    validate(milan, p)
    for bad in (
        {"unknown": 1},
        {"allow_debug": "no"},
        {"vmpl": 4},
        {"min_tcb": {"snp": -1}},
        {"min_tcb": {"bogus": 1}},
        {"measurements": ["00"]},
        {"measurements": []},
        {"host_data": "zz"},
        {"min_firmware": "1"},
        {"products": ["Naples"]},
        {"signing_keys": ["ask"]},
    ):
        with pytest.raises(SnpFormatError):
            SnpPolicy.from_json(json.dumps(bad))
    with pytest.raises(SnpFormatError, match="duplicate"):
        SnpPolicy.from_json('{"vmpl": 0, "vmpl": 1}')
