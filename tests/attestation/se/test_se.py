"""IBM Secure Execution: formats checked byte-exact against s390-tools' own
vectors (tests/fixtures/evidence/se, MANIFEST.md there), and the verifier
against a software Ultravisor with generated host keys (fake_uv.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.se.arcb import boot_hdr_tags, build_arcb, measurement
from attestation.se.errors import SeVerificationError
from attestation.se.kbs import SeVerifier
from attestation.verifier import EvidenceVerifier
from kbs.verifiers import auth_extra_params

from .fake_uv import SE, SeTestPki, guest_response

NOW = datetime.now(UTC)


def test_arcb_matches_s390_tools_vector() -> None:
    priv = ec.derive_private_key(
        int.from_bytes((SE / "private_cust.bin").read_bytes(), "big"), ec.SECP521R1()
    )
    host = x509.load_pem_x509_certificate((SE / "host.pem.crt").read_bytes()).public_key()
    assert isinstance(host, ec.EllipticCurvePublicKey)
    arcb = build_arcb(
        [host], requester_key=priv, protection_key=b"\x17" * 32, iv=b"\x55" * 12,
        measurement_key=b"\x77" * 64, nonce=b"\xab" * 16,
    )  # fmt: skip
    assert arcb.blob == (SE / "arcb.bin").read_bytes()
    assert arcb.additional_size == 64


def test_boot_header_tags_match_s390_tools() -> None:
    hdr = (SE / "secure_guest.hdr").read_bytes()
    tags = boot_hdr_tags(hdr)
    assert (
        tags[:4].hex() == "be94b5ea" and tags[64:68].hex() == "2858c336" and tags[128:132].hex() == "4860ebcf"
    )
    assert tags[192:].hex() == "92309d4589b9a85b427f8753171d1520"
    for bad in (hdr[1:], b"X" + hdr[1:], hdr[:300]):
        with pytest.raises(EvidenceFormatError):
            boot_hdr_tags(bad)


@pytest.mark.parametrize(
    ("user", "nonce", "additional", "prefix"),
    [
        (bytes([7] * 256), bytes([8] * 16), bytes([9] * 128), "88794c62"),
        (bytes([7] * 256), None, bytes([9] * 128), "fbd4f738"),
        (b"", None, bytes([9] * 128), "63671fbf"),
        (b"", None, b"", "c5c34c93"),
    ],
)
def test_measurement_matches_s390_tools(
    user: bytes, nonce: bytes | None, additional: bytes, prefix: str
) -> None:
    tags = bytes([1] * 64 + [2] * 64 + [3] * 64 + [4] * 16)
    assert measurement(b"\x41" * 64, tags, bytes([5] * 16), user, nonce, additional)[:4].hex() == prefix


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SeTestPki:
    return SeTestPki.create(tmp_path_factory.mktemp("se"))


def _verifier(pki: SeTestPki) -> SeVerifier:
    return SeVerifier(**pki.options())


def _round(v: SeVerifier, pki: SeTestPki, rd: bytes) -> tuple[str, dict[str, str]]:
    challenge = v.generate_challenge({"supported-hash-algorithms": ["sha512"]})
    return challenge, guest_response(challenge, pki.host_key, rd)


def test_contract(pki: SeTestPki) -> None:
    assert isinstance(_verifier(pki), EvidenceVerifier) and _verifier(pki).tee == "se"


def test_challenge_response_verifies(pki: SeTestPki) -> None:
    v = _verifier(pki)
    rd = hashlib.sha512(b"runtime data").digest()
    challenge, resp = _round(v, pki, rd)
    req = json.loads(challenge)
    assert set(req) == {
        "request_blob", "measurement_size", "additional_size", "encr_measurement_key",
        "encr_request_nonce", "image_hdr_tags",
    }  # fmt: skip
    assert req["measurement_size"] == 64 and req["additional_size"] == 64
    claims = v.verify(resp, expected_report_data=rd, expected_init_data_hash=None, now=NOW)
    phkh = hashlib.sha256(
        pki.host_key.public_key().public_numbers().x.to_bytes(80, "big")
        + pki.host_key.public_key().public_numbers().y.to_bytes(80, "big")
    ).hexdigest()
    assert claims["attestation_phkh"] == claims["image_phkh"] == phkh
    assert claims["report_data"] == rd.hex() and claims["version"] == 256
    assert claims["tag"] == "92309d4589b9a85b427f8753171d1520"
    # single use: the same response again is refused
    with pytest.raises(SeVerificationError, match="challenge"):
        v.verify(resp, expected_report_data=rd, expected_init_data_hash=None, now=NOW)


def test_forged_measurement_key_is_refused(pki: SeTestPki) -> None:
    """The flaw a decrypt-what-comes-back verifier has: the KBS key is public, so a
    client can wrap its own measurement key and compute a valid HMAC with no Ultravisor."""
    v = _verifier(pki)
    rd = hashlib.sha512(b"rd").digest()
    _challenge, resp = _round(v, pki, rd)
    pub = serialization.load_pem_private_key((pki.dir / "encrypt_key.pem").read_bytes(), None).public_key()
    my_key, my_nonce = b"\x01" * 64, b"\x02" * 16
    tags = base64.b64decode(resp["image_hdr_tags"])
    cuid, ud, add = (
        base64.b64decode(resp["cuid"]),
        base64.b64decode(resp["user_data"]),
        base64.b64decode(resp["additional_data"]),
    )
    forged = dict(
        resp,
        encr_measurement_key=base64.b64encode(pub.encrypt(my_key, padding.PKCS1v15())).decode(),  # type: ignore[union-attr]
        encr_request_nonce=base64.b64encode(pub.encrypt(my_nonce, padding.PKCS1v15())).decode(),  # type: ignore[union-attr]
        measurement=base64.b64encode(measurement(my_key, tags, cuid, ud, my_nonce, add)).decode(),
    )
    with pytest.raises(SeVerificationError, match="challenge"):
        v.verify(forged, expected_report_data=rd, expected_init_data_hash=None, now=NOW)


def _flip(resp: dict[str, str], key: str, offset: int) -> dict[str, str]:
    b = bytearray(base64.b64decode(resp[key]))
    b[offset] ^= 1
    return dict(resp, **{key: base64.b64encode(bytes(b)).decode()})


@pytest.mark.parametrize(
    ("key", "offset", "match"),
    [
        ("measurement", 0, "measurement"),
        ("cuid", 3, "measurement"),
        ("user_data", 63, "USER_DATA"),
        ("additional_data", 40, "measurement"),
        ("image_hdr_tags", 200, "tags"),
        ("encr_request_nonce", 5, "nonce"),
        ("encr_measurement_key", 5, "challenge"),
    ],
)
def test_byte_flips(pki: SeTestPki, key: str, offset: int, match: str) -> None:
    v = _verifier(pki)
    rd = hashlib.sha512(b"x").digest()
    _, resp = _round(v, pki, rd)
    with pytest.raises(SeVerificationError, match=match):
        v.verify(_flip(resp, key, offset), expected_report_data=rd, expected_init_data_hash=None, now=NOW)


def test_report_data_binding_and_malformed(pki: SeTestPki) -> None:
    v = _verifier(pki)
    _, resp = _round(v, pki, hashlib.sha512(b"a").digest())
    with pytest.raises(SeVerificationError, match="USER_DATA"):
        v.verify(
            resp, expected_report_data=hashlib.sha512(b"b").digest(), expected_init_data_hash=None, now=NOW
        )
    for bad in ({}, dict(resp, extra="x"), dict(resp, cuid="***"), "not json"):
        with pytest.raises(EvidenceFormatError):
            v.verify(bad, expected_report_data=b"", expected_init_data_hash=None, now=NOW)


def test_host_key_documents_are_checked(pki: SeTestPki) -> None:
    opts: dict[str, Any] = pki.options()
    with pytest.raises(ValueError, match="not signed"):
        SeVerifier(**dict(opts, host_key_documents=[str(pki.dir / "stray-hkd.crt")]))
    with pytest.raises(ValueError, match="chain"):
        SeVerifier(**dict(opts, hkd_ca_certs=[str(pki.dir / "hkd.crt")]))


def test_auth_extra_params_as_trustee() -> None:
    assert auth_extra_params("se", {"supported-hash-algorithms": ["sha384", "SHA512"]}) == {
        "selected-hash-algorithm": "sha512"
    }
    assert auth_extra_params("se", {}) == ""
    assert auth_extra_params("se", "") == ""
    assert auth_extra_params("snp", {"supported-hash-algorithms": ["sha512"]}) == ""
    with pytest.raises(EvidenceFormatError):
        auth_extra_params("se", {"supported-hash-algorithms": ["sha384"]})
    with pytest.raises(EvidenceFormatError):
        auth_extra_params("se", {"supported-hash-algorithms": "sha512"})


def test_uvdevice_structures_match_the_kernel_header() -> None:
    import ctypes

    from attestation.se.attester import UVIO_IOCTL_ATT, UvioAttest, UvioIoctlCb

    assert ctypes.sizeof(UvioIoctlCb) == 0x40 and ctypes.sizeof(UvioAttest) == 0x138
    assert UvioAttest.config_uid.offset == 0x118 and UvioAttest.arcb_len.offset == 0x128
    assert UvioAttest.user_data_len.offset == 0x134 and UvioIoctlCb.argument_len.offset == 0x10
    # _IOWR('u', UVIO_IOCTL_ATT_NR = 1, struct uvio_ioctl_cb)
    assert (3 << 30) | (0x40 << 16) | (ord("u") << 8) | 1 == UVIO_IOCTL_ATT


def test_attester_answers_the_challenge(pki: SeTestPki) -> None:
    import asyncio

    from attestation.se.attester import SeAttester
    from kbs_client.rcar import se_request_with_digest

    from .fake_uv import SoftwareUv

    v = _verifier(pki)
    rd = hashlib.sha512(b"runtime data").digest()
    challenge = v.generate_challenge("")
    uv = SoftwareUv(pki.host_key, boot_hdr_tags((SE / "secure_guest.hdr").read_bytes()))
    ev = asyncio.run(SeAttester(uv).get_evidence(se_request_with_digest(challenge, rd)))
    assert uv.calls == [(64, 64, rd)]
    assert (
        v.verify(ev, expected_report_data=rd, expected_init_data_hash=None, now=NOW)["report_data"]
        == rd.hex()
    )
    with pytest.raises(AttestationError):
        asyncio.run(SeAttester(uv).get_evidence(challenge.encode()))  # no runtime_data_digest
