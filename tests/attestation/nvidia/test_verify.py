"""Device verification on the recorded vectors: positives, negatives, NvidiaVerifier, policy."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography import x509

from attestation.errors import EvidenceFormatError, PolicyViolation, VerificationError
from attestation.nvidia.certs import DEVICE_ROOT_SHA1, default_device_root, leaf_fwid, load_pem_chain
from attestation.nvidia.endorsements import RimFiles
from attestation.nvidia.errors import RimError
from attestation.nvidia.evidence import DeviceEvidence, parse_evidence
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.nvidia.policy import NvidiaPolicy
from attestation.nvidia.verify import TrustAnchors, verify_device
from attestation.verifier import EvidenceVerifier

from .vectors import NONCE_27A, NONCE_931, NOW, POSITIVE, read, report_bytes

AT_2024 = datetime(2024, 6, 1, tzinfo=UTC)


def dev(rep: str, chain: str, arch: str = "HOPPER") -> DeviceEvidence:
    return DeviceEvidence(arch=arch, uuid="GPU-test", report=report_bytes(rep), cert_chain_pem=read(chain))


@pytest.mark.parametrize(("rep", "chain", "nonce", "arch", "driver", "vbios"), POSITIVE)
def test_recorded_evidence_verifies(
    anchors: TrustAnchors, rep: str, chain: str, nonce: bytes, arch: str, driver: str, vbios: str
) -> None:
    v = verify_device(dev(rep, chain, arch), expected_nonce=nonce, anchors=anchors, now=NOW)
    c = v.claims()
    assert (c["arch"], c["driver_version"], c["vbios_version"]) == (arch, driver, vbios)
    assert c["nonce"] == nonce.hex() and c["nonce_checked"] is True
    assert c["measurements_match"] is None
    # the 535 report predates the FWID opaque field; all others bind their FWID
    assert c["fwid_checked"] is (rep != "attestation-sdk/gpu_hopperAttestationReport.txt")
    assert len(c["measurements"]) == 64


def test_packaged_device_root_is_the_pinned_one() -> None:
    from cryptography.hazmat.primitives import hashes

    root = default_device_root()
    assert root.fingerprint(hashes.SHA1()).hex() == DEVICE_ROOT_SHA1
    assert root == x509.load_pem_x509_certificate(read("nvtrust/verifier_device_root.pem"))


def test_fwid_extraction_hopper_and_blackwell() -> None:
    hopper_leaf = x509.load_pem_x509_certificate(read("trustee/hopper_signing_cert.pem"))
    assert leaf_fwid(hopper_leaf) == bytes.fromhex(
        "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
    )
    bw_leaf = load_pem_chain(read("attestation-sdk/gpu_blackwellCertChain.txt"))[0]
    fwid = leaf_fwid(bw_leaf)
    assert fwid is not None and fwid.hex().startswith("d090cab1b6e6")


def test_wrong_nonce_rejected(anchors: TrustAnchors) -> None:
    with pytest.raises(VerificationError, match="nonce"):
        verify_device(dev(*POSITIVE[0][:2]), expected_nonce=b"\0" * 32, anchors=anchors, now=NOW)


def test_invalid_signature_rejected(anchors: TrustAnchors) -> None:
    d = dev(
        "attestation-sdk/gpu_hopperAttestationReportInvalidSignature.txt",
        "attestation-sdk/gpu_hopperCertChainExpired.txt",
    )
    with pytest.raises(VerificationError, match="signature is invalid"):
        verify_device(d, expected_nonce=None, anchors=anchors, now=NOW)


def test_flipped_measurement_byte_breaks_signature(anchors: TrustAnchors) -> None:
    raw = bytearray(report_bytes("nvtrust/hopperAttestationReport.txt"))
    raw[200] ^= 1
    d = DeviceEvidence("HOPPER", None, bytes(raw), read("nvtrust/hopperCertChain.txt"))
    with pytest.raises(VerificationError, match="signature"):
        verify_device(d, expected_nonce=None, anchors=anchors, now=NOW)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("trustee/hopper_cert_chain_case2.txt", "only the root"),
        ("trustee/hopper_cert_chain_case3.txt", "chain broken"),
        ("trustee/hopper_cert_chain_case4.txt", "FMC LF"),
    ],
)
def test_broken_chains_rejected(anchors: TrustAnchors, chain: str, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        verify_device(
            dev("nvtrust/hopperAttestationReport.txt", chain),
            expected_nonce=NONCE_931,
            anchors=anchors,
            now=NOW,
        )


def test_chain_not_ending_at_trusted_root(anchors: TrustAnchors) -> None:
    other = TrustAnchors(
        device_root=x509.load_pem_x509_certificate(read("nvtrust/verifier_RIM_root.pem")),
        rim_root=anchors.rim_root,
    )
    with pytest.raises(VerificationError, match="chain"):
        verify_device(dev(*POSITIVE[0][:2]), expected_nonce=NONCE_931, anchors=other, now=NOW)


def test_chain_checked_at_the_given_time(anchors: TrustAnchors) -> None:
    with pytest.raises(VerificationError, match="not valid before"):
        verify_device(
            dev(*POSITIVE[0][:2]),
            expected_nonce=NONCE_931,
            anchors=anchors,
            now=datetime(2019, 1, 1, tzinfo=UTC),
        )


def test_report_from_another_gpu_chain_rejected(anchors: TrustAnchors) -> None:
    d = dev("nvtrust/hopperAttestationReport.txt", "trustee/hopper_coco_certs1.txt")
    with pytest.raises(VerificationError):
        verify_device(d, expected_nonce=NONCE_931, anchors=anchors, now=NOW)


def test_arch_claim_must_match_certificate(anchors: TrustAnchors) -> None:
    d = dev("nvtrust/hopperAttestationReport.txt", "nvtrust/hopperCertChain.txt", arch="BLACKWELL")
    with pytest.raises(VerificationError, match="says BLACKWELL"):
        verify_device(d, expected_nonce=NONCE_931, anchors=anchors, now=NOW)


def test_with_matching_vbios_rim(anchors: TrustAnchors) -> None:
    rims = RimFiles((read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag"),))
    d = dev("attestation-sdk/gpu_hopperAttestationReport.txt", "attestation-sdk/gpu_hopperCertChain.txt")
    v = verify_device(d, expected_nonce=NONCE_27A, anchors=anchors, now=AT_2024, rims=rims)
    assert v.measurements_match is True and v.matched_measurements == 12
    assert v.claims()["rims"][0]["version"] == "96.00.5E.00.01"


def test_rim_measurement_mismatch(anchors: TrustAnchors) -> None:
    rims = RimFiles(
        (read("attestation-sdk/rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"),)
    )
    d = dev("attestation-sdk/gpu_hopperAttestationReport.txt", "attestation-sdk/gpu_hopperCertChain.txt")
    with pytest.raises(RimError, match="index 9"):
        verify_device(d, expected_nonce=NONCE_27A, anchors=anchors, now=AT_2024, rims=rims)


def test_rim_for_another_version(anchors: TrustAnchors) -> None:
    rims = RimFiles((read("nvtrust/1010_0200_882_960074001A_PROD.swidtag"),))
    d = dev("attestation-sdk/gpu_hopperAttestationReport.txt", "attestation-sdk/gpu_hopperCertChain.txt")
    with pytest.raises(RimError, match="none of the 1 RIMs"):
        verify_device(d, expected_nonce=NONCE_27A, anchors=anchors, now=AT_2024, rims=rims)


def test_expired_rim_rejected(anchors: TrustAnchors) -> None:
    rims = RimFiles((read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag"),))
    d = dev("attestation-sdk/gpu_hopperAttestationReport.txt", "attestation-sdk/gpu_hopperCertChain.txt")
    with pytest.raises(RimError, match="expired"):
        verify_device(d, expected_nonce=NONCE_27A, anchors=anchors, now=NOW, rims=rims)


def test_ppcie_sdk_lists_verify(anchors: TrustAnchors) -> None:
    for rel, arch, count in [
        ("nvtrust/ppcie_gpu_evidence.json", "HOPPER", 8),
        ("nvtrust/ppcie_switch_evidence.json", "LS10", 4),
    ]:
        devices = parse_evidence(read(rel))
        assert len(devices) == count
        for d in devices:
            assert d.nonce is not None
            v = verify_device(d, expected_nonce=d.nonce, anchors=anchors, now=NOW)
            assert v.arch == arch


def gc_evidence(rep: str, chain: str) -> dict[str, object]:
    return {
        "device_evidence_list": [
            {
                "arch": "HOPPER",
                "uuid": "GPU-1234",
                "evidence": base64.b64encode(report_bytes(rep)).decode(),
                "certificate": base64.b64encode(read(chain)).decode(),
            }
        ]
    }


def test_nvidia_verifier_contract(anchors: TrustAnchors) -> None:
    v = NvidiaVerifier(anchors=anchors)
    assert isinstance(v, EvidenceVerifier) and v.tee == "nvidia"
    ev = gc_evidence(*POSITIVE[0][:2])
    # expected report data is the 48-byte digest; the device used its first 32 bytes
    claims = v.verify(
        ev, expected_report_data=NONCE_931 + b"\xaa" * 16, expected_init_data_hash=None, now=NOW
    )
    assert [d["uuid"] for d in claims["devices"]] == ["GPU-1234"]
    assert claims["devices"][0]["driver_version"] == "550.90.07"
    assert set(claims["devices"][0]) == {
        "arch", "uuid", "driver_version", "vbios_version", "fwid", "feature_flag", "nonce_checked",
        "fwid_checked", "measurements_match", "measurements_sha384", "rim_versions",
    }  # fmt: skip
    verbose = NvidiaVerifier(anchors=anchors, verbose_claims=True).verify(
        ev, expected_report_data=NONCE_931, expected_init_data_hash=None, now=NOW
    )
    assert len(verbose["devices"][0]["measurements"]) == 64
    with pytest.raises(VerificationError, match="nonce"):
        v.verify(ev, expected_report_data=b"\xaa" * 48, expected_init_data_hash=None, now=NOW)
    # also accepted as the JSON text, and with legacy hex evidence
    text = json.dumps(ev)
    assert v.verify(text, expected_report_data=NONCE_931, expected_init_data_hash=None, now=NOW)["devices"]
    ev_hex = json.loads(text)
    ev_hex["device_evidence_list"][0]["evidence"] = report_bytes(POSITIVE[0][0]).hex()
    assert v.verify(ev_hex, expected_report_data=NONCE_931, expected_init_data_hash=None, now=NOW)["devices"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(extra=1),
        lambda e: e["device_evidence_list"][0].update(extra="x"),
        lambda e: e["device_evidence_list"][0].update(arch="AMPERE"),
        lambda e: e["device_evidence_list"][0].update(evidence="***"),
        lambda e: e["device_evidence_list"][0].update(uuid=5),
        lambda e: e.update(device_evidence_list=[]),
    ],
)
def test_malformed_evidence_json(anchors: TrustAnchors, mutate: object) -> None:
    ev = gc_evidence(*POSITIVE[0][:2])
    mutate(ev)  # type: ignore[operator]
    with pytest.raises(EvidenceFormatError):
        NvidiaVerifier(anchors=anchors).verify(
            ev, expected_report_data=NONCE_931, expected_init_data_hash=None, now=NOW
        )


def test_duplicate_json_keys_rejected() -> None:
    with pytest.raises(EvidenceFormatError, match="duplicate"):
        parse_evidence(b'{"device_evidence_list": [], "device_evidence_list": []}')


def test_policy(anchors: TrustAnchors) -> None:
    v = verify_device(dev(*POSITIVE[0][:2]), expected_nonce=NONCE_931, anchors=anchors, now=NOW)
    NvidiaPolicy.from_json(
        b'{"allowed_arch": ["HOPPER"], "min_driver_version": "550.0", "require_fwid": true}'
    ).check([v])
    with pytest.raises(PolicyViolation, match="older than"):
        NvidiaPolicy.from_json(b'{"min_driver_version": "560"}').check([v])
    with pytest.raises(PolicyViolation, match="not compared"):
        NvidiaPolicy.from_json(b'{"require_measurements_match": true}').check([v])
    with pytest.raises(PolicyViolation, match="VBIOS"):
        NvidiaPolicy.from_json(b'{"allowed_vbios_versions": ["96.00.74.00.1a"]}').check([v])
    with pytest.raises(EvidenceFormatError, match="unknown policy keys"):
        NvidiaPolicy.from_json(b'{"allow_everything": true}')
    with pytest.raises(EvidenceFormatError):
        NvidiaPolicy.from_json(b'{"require_fwid": 1}')
