"""The Azure vTPM attesters against a real software TPM (swtpm) provisioned
as Azure's paravisor provisions its vTPM: an RSA AK persisted at 0x81000003
and an HCL report in NV index 0x01400001. IMDS (which exists only inside
Azure) is a local stand-in on 127.0.0.1.

swtpm's NV indices hold at most 2048 bytes, less than a recorded HCL report
(2346 bytes), and no paravisor refreshes the report when the report data is
written, so each test provisions an HCL report built here: a recorded
hardware report (SNP report / TDREPORT) followed by runtime data that holds
the swtpm's own AK and the user-data the test is about to request. With it
the full chain HCL -> AK -> quote -> nonce is checked against a real TPM; the
TDX case also gets a TD quote (re-signed under a test Intel-like PKI) that
binds the runtime data, so it verifies end to end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation.azure.attester import AzSnpVtpmAttester, AzTdxVtpmAttester
from attestation.azure.errors import AzureBindingError, ImdsError
from attestation.azure.evidence import AzSnpEvidence, AzTdxEvidence
from attestation.azure.hcl import HCL_REPORT_NV_INDEX, REPORT_DATA_NV_INDEX, HclReport, HwReportType
from attestation.azure.kbs import AzSnpVtpmVerifier, AzTdxVtpmVerifier
from attestation.azure.verify import verify_vtpm_quote
from attestation.errors import AttestationError
from attestation.tpm.device import open_tpm
from attestation.tpm.errors import TpmVerificationError
from attestation.tpm.quote import init_data_pcr_value

from ..tdx._forge import LATER, forge_quote, make_pki
from ..tpm.swtpm import Swtpm, running_swtpm
from ._data import AT as _AT
from ._data import SNP, TDX, load

AK = 0x81000003


def _b64url_int(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode().rstrip("=")


def build_hcl(hw_report: bytes, report_type: HwReportType, ak: rsa.RSAPublicKey, user_data: bytes) -> bytes:
    nums = ak.public_numbers()
    var = json.dumps(
        {
            "keys": [
                {
                    "kid": "HCLAkPub",
                    "key_ops": ["sign"],
                    "kty": "RSA",
                    "e": _b64url_int(nums.e),
                    "n": _b64url_int(nums.n),
                }
            ],
            "user-data": user_data.ljust(64, b"\x00").hex(),
        },
        separators=(",", ":"),
    ).encode()
    hw = hw_report.ljust(1184, b"\x00")
    igvm = struct.pack("<5I", 20 + len(var), 1, int(report_type), 1, len(var))
    total = 32 + len(hw) + len(igvm) + len(var)
    header = struct.pack("<8I", 0x414C4348, 2, total, 2, 0, 0, 0, 0)
    return header + hw + igvm + var


class _Imds:
    def __init__(self, vcek_pem: str, td_quote: bytes | None = None) -> None:
        self.vcek_pem = vcek_pem
        self.td_quote = td_quote
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, dict(self.headers), b""))
                if self.path == "/metadata/THIM/amd/certification" and self.headers.get("Metadata") == "true":
                    self._reply(200, {"vcekCert": outer.vcek_pem, "certificateChain": "", "tcbm": "x"})
                else:
                    self._reply(400, {"error": "bad request"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(("POST", self.path, dict(self.headers), body))
                if self.path == "/acc/tdquote" and outer.td_quote is not None:
                    self._reply(200, {"quote": base64.urlsafe_b64encode(outer.td_quote).decode().rstrip("=")})
                else:
                    self._reply(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def vtpm() -> Iterator[Swtpm]:
    with running_swtpm() as t:
        t.persist_ak(AK)
        yield t


def _ak(t: Swtpm) -> rsa.RSAPublicKey:
    with open_tpm(t.address) as tpm:
        key = tpm.read_public(AK).public_key
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _provision_hcl(t: Swtpm, hcl: bytes) -> None:
    with open_tpm(t.address) as tpm:
        if tpm.nv_read_public(HCL_REPORT_NV_INDEX) is not None:
            tpm.nv_undefine(HCL_REPORT_NV_INDEX)
    t.nv_store(HCL_REPORT_NV_INDEX, hcl)


def _recorded_vcek_pem() -> str:
    doc = load(SNP / "evidence-v1.json")
    der = base64.urlsafe_b64decode(doc["vcek"])
    return "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() + "-----END CERTIFICATE-----\n"


def test_az_snp_attester_on_swtpm(vtpm: Swtpm) -> None:
    rd = hashlib.sha384(b"kbs nonce + tee pubkey").digest()
    snp_report = HclReport.from_bytes((SNP / "hcl-report.bin").read_bytes()).hw_report
    hcl = build_hcl(snp_report, HwReportType.SNP, _ak(vtpm), rd)
    assert len(hcl) <= 2048
    _provision_hcl(vtpm, hcl)
    imds = _Imds(_recorded_vcek_pem())
    try:
        att = AzSnpVtpmAttester(vtpm.address, imds_url=imds.url, report_refresh_wait=0)
        doc = asyncio.run(att.get_evidence(rd))
    finally:
        imds.close()
    assert doc["version"] == 2
    ev = AzSnpEvidence.from_json(doc)
    assert ev.hcl_report == hcl  # read back whole from NV, in 1 KiB chunks
    # the report data went to the paravisor's NV index (as an independent TSS reads it)
    assert vtpm.nv_read(REPORT_DATA_NV_INDEX) == rd
    assert imds.requests[0][2].get("Metadata") == "true"
    # HCL -> AK -> quote -> nonce verifies against the real TPM's signature
    vt = verify_vtpm_quote(ev.hcl_report, ev.tpm_quote, want=HwReportType.SNP, expected_report_data=rd)
    assert vt.nonce == rd and len(vt.pcrs) == 24
    with pytest.raises(TpmVerificationError, match="nonce"):
        verify_vtpm_quote(ev.hcl_report, ev.tpm_quote, want=HwReportType.SNP, expected_report_data=rd[::-1])
    # ... and the full verifier refuses it only because the recorded SNP report does not
    # bind this runtime data (which holds the swtpm's AK, not the recorded VM's)
    with pytest.raises(AzureBindingError, match="runtime data digest"):
        AzSnpVtpmVerifier().verify(doc, expected_report_data=rd, expected_init_data_hash=None, now=_AT)


def test_az_tdx_attester_on_swtpm_verifies_end_to_end(vtpm: Swtpm) -> None:
    rd = hashlib.sha384(b"tdx runtime data").digest()
    td_report = HclReport.from_bytes((TDX / "hcl-report.bin").read_bytes()).hw_report
    hcl = build_hcl(td_report, HwReportType.TDX, _ak(vtpm), rd)
    _provision_hcl(vtpm, hcl)
    var_hash = HclReport.from_bytes(hcl).var_data_sha256
    real_quote = (TDX / "td-quote.bin").read_bytes()
    pki = make_pki(real_quote)
    td_quote = forge_quote(real_quote, pki, body_patch={520: var_hash + bytes(32)})
    imds = _Imds("", td_quote)
    init = hashlib.sha256(b"init-data").digest()
    try:
        att = AzTdxVtpmAttester(vtpm.address, imds_url=imds.url, report_refresh_wait=0)
        asyncio.run(att.bind_init_data(init))
        doc = asyncio.run(att.get_evidence(rd))
    finally:
        imds.close()
    # IMDS received the HCL's TDREPORT, base64url
    method, path, headers, body = imds.requests[0]
    assert (method, path, headers.get("Metadata")) == ("POST", "/acc/tdquote", "true")
    sent = json.loads(body)["report"]
    assert base64.urlsafe_b64decode(sent + "=" * (-len(sent) % 4)) == td_report
    assert AzTdxEvidence.from_json(doc).td_quote == td_quote
    verifier = AzTdxVtpmVerifier(root_ca=pki.root)
    claims = verifier.verify(doc, expected_report_data=rd, expected_init_data_hash=init, now=LATER)
    assert claims["report_data"] == rd.hex()
    assert claims["init_data"] == init_data_pcr_value(init).hex() == vtpm.pcr(8).hex()
    assert claims["quote"]["body"]["report_data"] == (var_hash + bytes(32)).hex()
    # the same evidence against the real Intel root: the test PKI is not trusted
    with pytest.raises(AttestationError):
        AzTdxVtpmVerifier().verify(doc, expected_report_data=rd, expected_init_data_hash=init, now=LATER)
    # user-data in the HCL (v2) must match the session's report data
    hcl_other = build_hcl(td_report, HwReportType.TDX, _ak(vtpm), b"\x00" * 48)
    _provision_hcl(vtpm, hcl_other)
    other_quote = forge_quote(
        real_quote, pki, body_patch={520: HclReport.from_bytes(hcl_other).var_data_sha256 + bytes(32)}
    )
    imds = _Imds("", other_quote)
    try:
        doc2 = asyncio.run(
            AzTdxVtpmAttester(vtpm.address, imds_url=imds.url, report_refresh_wait=0).get_evidence(rd)
        )
    finally:
        imds.close()
    with pytest.raises(AzureBindingError, match="user-data"):
        verifier.verify(doc2, expected_report_data=rd, expected_init_data_hash=None, now=LATER)


def test_wrong_report_type_and_imds_failures(vtpm: Swtpm) -> None:
    td_report = HclReport.from_bytes((TDX / "hcl-report.bin").read_bytes()).hw_report
    _provision_hcl(vtpm, build_hcl(td_report, HwReportType.TDX, _ak(vtpm), b""))
    imds = _Imds(_recorded_vcek_pem())
    try:
        with pytest.raises(AttestationError, match="not SNP"):
            asyncio.run(
                AzSnpVtpmAttester(vtpm.address, imds_url=imds.url, report_refresh_wait=0).get_evidence(b"x")
            )
        # IMDS without a TD quote service answers 404
        with pytest.raises(ImdsError, match="404"):
            asyncio.run(
                AzTdxVtpmAttester(vtpm.address, imds_url=imds.url, report_refresh_wait=0).get_evidence(b"x")
            )
    finally:
        imds.close()
    with pytest.raises(AttestationError):
        asyncio.run(AzSnpVtpmAttester(vtpm.address, report_refresh_wait=0).get_evidence(b"y" * 65))


def test_detection_reads_the_hcl_report_type(vtpm: Swtpm, tmp_path: Path) -> None:
    """guest-components' order: az-tdx-vtpm, az-snp-vtpm before snp, tpm last."""
    from attestation.detect import HostView, detect_primary_tee, make_primary_attester

    plat = HostView(root=tmp_path, env={"AA_TPM_DEVICE": vtpm.address}, machine="x86_64")
    td_report = HclReport.from_bytes((TDX / "hcl-report.bin").read_bytes()).hw_report
    _provision_hcl(vtpm, build_hcl(td_report, HwReportType.TDX, _ak(vtpm), b""))
    assert detect_primary_tee(plat) == "az-tdx-vtpm"
    snp_report = HclReport.from_bytes((SNP / "hcl-report.bin").read_bytes()).hw_report
    _provision_hcl(vtpm, build_hcl(snp_report, HwReportType.SNP, _ak(vtpm), b""))
    assert detect_primary_tee(plat) == "az-snp-vtpm"
    with open_tpm(vtpm.address) as tpm:
        tpm.nv_undefine(HCL_REPORT_NV_INDEX)
    assert detect_primary_tee(plat) == "tpm"
    assert detect_primary_tee(HostView(root=tmp_path, env={}, machine="x86_64")) == "sample"
    assert make_primary_attester("az-snp-vtpm").tee == "az-snp-vtpm"


def test_detection_opens_the_vtpm_once_a_pass(
    vtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The az-tdx-vtpm and az-snp-vtpm probes share one read of the HCL report per
    detection pass; the next pass reads it again (the vTPM may have changed)."""
    import attestation.tpm.device as device
    from attestation.detect import HostView, detect_primary_tee, present_platforms

    opened: list[str] = []
    real_open = device.open_tpm

    def counting_open(address: str) -> Any:
        opened.append(address)
        return real_open(address)

    monkeypatch.setattr(device, "open_tpm", counting_open)
    plat = HostView(root=tmp_path, env={"AA_TPM_DEVICE": vtpm.address}, machine="x86_64")
    snp_report = HclReport.from_bytes((SNP / "hcl-report.bin").read_bytes()).hw_report
    _provision_hcl(vtpm, build_hcl(snp_report, HwReportType.SNP, _ak(vtpm), b""))
    opened.clear()
    assert detect_primary_tee(plat) == "az-snp-vtpm"  # the az-tdx-vtpm probe asked first
    assert len(opened) == 1
    assert "az-snp-vtpm" in present_platforms(plat) and "az-tdx-vtpm" not in present_platforms(plat)
    assert len(opened) == 3  # one more per pass
    td_report = HclReport.from_bytes((TDX / "hcl-report.bin").read_bytes()).hw_report
    _provision_hcl(vtpm, build_hcl(td_report, HwReportType.TDX, _ak(vtpm), b""))
    assert detect_primary_tee(plat) == "az-tdx-vtpm"  # not the SNP answer of an earlier pass
