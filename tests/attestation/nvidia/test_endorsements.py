"""OCSP checks and the RIM service client, against in-test responders on an
httpx MockTransport (no network here; NVIDIA's responders are not reachable)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from attestation.errors import VerificationError
from attestation.nvidia.endorsements import HttpOcspChecker, RimService
from attestation.nvidia.errors import RimError
from attestation.nvidia.evidence import DeviceEvidence
from attestation.nvidia.spdm import AttestationReport
from attestation.nvidia.verify import TrustAnchors, verify_device

from .fakegpu import TestGpu
from .vectors import NONCE_27A, read, report_bytes

NOW = dt.datetime.now(dt.UTC)


def responder(
    gpu: TestGpu,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    echo_nonce: bool = True,
    tamper: bool = False,
    rogue: bool = False,
    seen: list[int] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    leaf, ica, root = gpu.chain
    issuers = {ica.serial_number: (root, gpu.root_key), leaf.serial_number: (ica, gpu.ica_key)}
    certs = {ica.serial_number: ica, leaf.serial_number: leaf}

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/ocsp-request"
        req = ocsp.load_der_ocsp_request(request.content)
        if seen is not None:
            seen.append(req.serial_number)
        issuer, key = issuers[req.serial_number]
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=certs[req.serial_number],
            issuer=issuer,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=NOW - dt.timedelta(hours=1),
            next_update=NOW + dt.timedelta(hours=1),
            revocation_time=NOW - dt.timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=x509.ReasonFlags.key_compromise
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
        )
        if rogue:
            key = ec.generate_private_key(ec.SECP384R1())
            name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rogue responder")])
            rogue_cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(1)
                .not_valid_before(NOW - dt.timedelta(days=1))
                .not_valid_after(NOW + dt.timedelta(days=1))
                .sign(key, hashes.SHA384())
            )
            b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, rogue_cert).certificates([rogue_cert])
        else:
            b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
        if echo_nonce:
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
        der = bytearray(b.sign(key, hashes.SHA384()).public_bytes(serialization_der()))
        if tamper:
            der[-1] ^= 0x01
        return httpx.Response(200, content=bytes(der))

    return handle


def serialization_der() -> Encoding:
    return Encoding.DER


@pytest.fixture(scope="module")
def gpu() -> TestGpu:
    return TestGpu(report_bytes("nvtrust/hopperAttestationReport.txt"))


def check(gpu: TestGpu, handler: Callable[[httpx.Request], httpx.Response]) -> None:
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        HttpOcspChecker(client=client, url="http://ocsp.test/").check(
            gpu.chain, root=gpu.root, now=NOW, skip_leaf=True
        )


def test_good_status_checks_intermediates_only(gpu: TestGpu) -> None:
    seen: list[int] = []
    check(gpu, responder(gpu, seen=seen))
    assert seen == [gpu.chain[1].serial_number]


def test_revoked(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="revoked"):
        check(gpu, responder(gpu, status=ocsp.OCSPCertStatus.REVOKED))


def test_unknown(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="unknown"):
        check(gpu, responder(gpu, status=ocsp.OCSPCertStatus.UNKNOWN))


def test_nonce_not_echoed(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="nonce"):
        check(gpu, responder(gpu, echo_nonce=False))


def test_tampered_response(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="signature"):
        check(gpu, responder(gpu, tamper=True))


def test_rogue_responder(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="not delegated"):
        check(gpu, responder(gpu, rogue=True))


def test_responder_down(gpu: TestGpu) -> None:
    with pytest.raises(VerificationError, match="HTTP 503"):
        check(gpu, lambda r: httpx.Response(503))


def test_ocsp_inside_device_verification(gpu: TestGpu) -> None:
    nonce = b"\x33" * 32
    d = DeviceEvidence("HOPPER", "GPU-o", gpu.report(nonce), gpu.chain_pem)
    anchors = TrustAnchors(device_root=gpu.root, rim_root=gpu.root)
    with (
        httpx.Client(
            transport=httpx.MockTransport(responder(gpu, status=ocsp.OCSPCertStatus.REVOKED))
        ) as client,
        pytest.raises(VerificationError, match="revoked"),
    ):
        verify_device(d, expected_nonce=nonce, anchors=anchors, now=NOW, ocsp=HttpOcspChecker(client=client))
    with httpx.Client(transport=httpx.MockTransport(responder(gpu))) as client:
        v = verify_device(
            d, expected_nonce=nonce, anchors=anchors, now=NOW, ocsp=HttpOcspChecker(client=client)
        )
        assert v.uuid == "GPU-o"


def test_rim_ids_for_recorded_reports() -> None:
    r535 = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"))
    assert RimService.rim_ids(r535, "HOPPER") == [
        "NV_GPU_DRIVER_GH100_535.86.09",
        "NV_GPU_VBIOS_1010_0200_882_96005E0001",
    ]
    bw = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_blackwellAttestationReport.txt"))
    assert RimService.rim_ids(bw, "BLACKWELL")[0] == "NV_GPU_CC_DRIVER_GB100_575.32"


def test_rim_service_feeds_verification() -> None:
    vbios = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        rim_id = request.url.path.rsplit("/", 1)[1]
        asked.append(rim_id)
        if rim_id.startswith("NV_GPU_VBIOS_"):
            return httpx.Response(200, json={"id": rim_id, "rim": base64.b64encode(vbios).decode()})
        return httpx.Response(404)

    d = DeviceEvidence(
        "HOPPER",
        None,
        report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"),
        read("attestation-sdk/gpu_hopperCertChain.txt"),
    )
    at = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    with httpx.Client(transport=httpx.MockTransport(handle)) as client:
        svc = RimService(client=client, base_url="http://rim.test/v1/rim/")
        with pytest.raises(RimError, match=r"no RIM NV_GPU_DRIVER_GH100_535\.86\.09"):
            verify_device(d, expected_nonce=NONCE_27A, anchors=TrustAnchors.nvidia(), now=at, rims=svc)

        def vbios_only(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"rim": base64.b64encode(vbios).decode()})

    with httpx.Client(transport=httpx.MockTransport(vbios_only)) as client:
        svc = RimService(client=client, base_url="http://rim.test/v1/rim/")
        # the driver ID answers with the VBIOS RIM: verified, but it is the same RIM twice
        with pytest.raises(RimError, match="more than one RIM"):
            verify_device(d, expected_nonce=NONCE_27A, anchors=TrustAnchors.nvidia(), now=at, rims=svc)
    assert asked == ["NV_GPU_DRIVER_GH100_535.86.09"]


def test_rim_service_caches_and_limits_answers() -> None:
    vbios = read("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if "DRIVER" in request.url.path:
            return httpx.Response(200, content=b'{"rim": "' + b"A" * (3 * 1024 * 1024) + b'"}')
        return httpx.Response(200, json={"rim": base64.b64encode(vbios).decode()})

    report = AttestationReport.from_bytes(report_bytes("attestation-sdk/gpu_hopperAttestationReport.txt"))
    with httpx.Client(transport=httpx.MockTransport(handle)) as client:
        svc = RimService(client=client, base_url="http://rim.test/v1/rim/")
        with pytest.raises(RimError, match="larger than"):
            svc.rims_for(report, "HOPPER")
        assert svc._fetch("NV_GPU_VBIOS_1010_0200_882_96005E0001") == vbios
        svc.cache["NV_GPU_DRIVER_GH100_535.86.09"] = b"<cached/>"
        before = len(asked)
        docs = svc.rims_for(report, "HOPPER")
        assert docs[0] == b"<cached/>" and docs[1] == vbios
        assert len(asked) == before + 1  # the VBIOS RIM fetched once more, then cached
        svc.rims_for(report, "HOPPER")
        assert len(asked) == before + 1
