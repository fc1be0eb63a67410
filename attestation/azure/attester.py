"""Attesters for Azure confidential VMs: ``az-snp-vtpm`` and ``az-tdx-vtpm``
(evidence version 2, guest-components' shape).

Collection, as Microsoft's tooling does it on the paravisor vTPM:

1. write the report data to NV index 0x01400002 (owner auth; the index is
   (re)defined to the data's size); the paravisor then refreshes the HCL
   report with it as ``user-data`` (upstream waits 3 s for that);
2. read the HCL report from NV index 0x01400001;
3. quote the 24 SHA-256 PCRs with the vTPM AK (persistent handle 0x81000003)
   and the report data as nonce;
4. SNP: fetch the VCEK from Azure IMDS (``/metadata/THIM/amd/certification``);
   TDX: send the HCL's TDREPORT to IMDS (``/acc/tdquote``) for a TD quote.

The IMDS base URL is configurable (tests run a local stand-in; the real one
exists only inside Azure). Init-data is bound by extending PCR 8.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httpx

from attestation.azure.errors import AzureError, ImdsError
from attestation.azure.evidence import AzSnpEvidence, AzTdxEvidence, VtpmQuote
from attestation.azure.hcl import HCL_REPORT_NV_INDEX, REPORT_DATA_NV_INDEX, HclReport, HwReportType
from attestation.tpm.attester import detect_tpm_device, quote_all_pcrs
from attestation.tpm.device import DEFAULT_DEVICE, open_tpm
from attestation.tpm.errors import TpmCommandError
from attestation.tpm.quote import INIT_DATA_PCR
from attestation.tpm.structures import ALG_RSASSA, parse_signature
from coco_common.b64 import b64url_decode, b64url_encode
from coco_common.http import sync_client
from coco_common.http_body import DECODABLE, BodyTooLarge, HttpBodyError, read_body_sync
from coco_common.strict_json import strict_loads

__all__ = ["DEFAULT_IMDS", "VTPM_AK_HANDLE", "AzSnpVtpmAttester", "AzTdxVtpmAttester"]

VTPM_AK_HANDLE = 0x81000003
DEFAULT_IMDS = "http://169.254.169.254"
_MAX_IMDS_BODY = 256 * 1024
_EVIDENCE_VERSION = 2


def _imds_json(client: httpx.Client, method: str, url: str, body: Any = None) -> Any:
    headers = {"Metadata": "true", "Accept": "application/json"}
    try:
        with client.stream(method, url, headers=headers, json=body) as resp:
            if resp.status_code != 200:
                raise ImdsError(f"IMDS {url.rsplit('/', 1)[-1]} answered HTTP {resp.status_code}")
            data = read_body_sync(resp, _MAX_IMDS_BODY, decode=DECODABLE, what="IMDS response")
    except BodyTooLarge:
        raise ImdsError("IMDS response too large") from None
    except HttpBodyError as exc:
        raise ImdsError(f"IMDS request failed: {exc}") from None
    except httpx.HTTPError as exc:
        raise ImdsError(f"IMDS request failed: {type(exc).__name__}") from exc
    try:
        return strict_loads(data)
    except ValueError as exc:
        raise ImdsError("IMDS response is not JSON") from exc


class _AzureVtpm:
    _want: HwReportType

    def __init__(
        self,
        device: str | None = None,
        *,
        imds_url: str = DEFAULT_IMDS,
        report_refresh_wait: float = 3.0,
        timeout: float = 30.0,
    ) -> None:
        self.device = device or detect_tpm_device() or DEFAULT_DEVICE
        self.imds_url = imds_url.rstrip("/")
        self.report_refresh_wait = report_refresh_wait
        self.timeout = timeout

    def _collect(self, report_data: bytes) -> tuple[bytes, VtpmQuote]:
        if len(report_data) > 64:
            raise AzureError("report data longer than 64 bytes")
        with open_tpm(self.device) as tpm:
            tpm.nv_write_sized(REPORT_DATA_NV_INDEX, report_data)
            if self.report_refresh_wait > 0:
                time.sleep(self.report_refresh_wait)
            hcl = tpm.nv_read(HCL_REPORT_NV_INDEX)
            message, signature, pcrs = quote_all_pcrs(tpm, VTPM_AK_HANDLE, report_data, None)
        sig = parse_signature(signature)
        if sig.sig_alg != ALG_RSASSA:
            raise TpmCommandError("the vTPM AK did not sign with RSASSA")
        return hcl, VtpmQuote(sig.value, message, tuple(pcrs))

    def _hcl(self, raw: bytes) -> HclReport:
        hcl = HclReport.from_bytes(raw)
        if hcl.report_type is not self._want:
            raise AzureError(f"this VM's HCL report is {hcl.report_type.name}, not {self._want.name}")
        return hcl

    def _extend(self, digest: bytes) -> None:
        if len(digest) != 32:
            raise TpmCommandError("the vTPM binds SHA-256 init-data digests only")
        with open_tpm(self.device) as tpm:
            tpm.pcr_extend(INIT_DATA_PCR, digest)

    async def bind_init_data(self, digest: bytes) -> None:
        await asyncio.to_thread(self._extend, digest)


class AzSnpVtpmAttester(_AzureVtpm):
    tee = "az-snp-vtpm"
    _want = HwReportType.SNP

    def _evidence(self, report_data: bytes) -> dict[str, Any]:
        hcl, quote = self._collect(report_data)
        self._hcl(hcl)
        with sync_client(timeout=self.timeout) as client:
            doc = _imds_json(client, "GET", f"{self.imds_url}/metadata/THIM/amd/certification")
        pem = doc.get("vcekCert") if isinstance(doc, dict) else None
        if not isinstance(pem, str):
            raise ImdsError("IMDS certification response has no vcekCert")
        try:  # DER as sent; the verifier parses and checks it
            der = ssl.PEM_cert_to_DER_cert(pem.strip())
        except ValueError as exc:
            raise ImdsError("IMDS vcekCert is not a PEM certificate") from exc
        return AzSnpEvidence(_EVIDENCE_VERSION, quote, hcl, der).to_json()

    async def get_evidence(self, report_data: bytes) -> Any:
        return await asyncio.to_thread(self._evidence, report_data)


class AzTdxVtpmAttester(_AzureVtpm):
    tee = "az-tdx-vtpm"
    _want = HwReportType.TDX

    def _evidence(self, report_data: bytes) -> dict[str, Any]:
        hcl_raw, quote = self._collect(report_data)
        hcl = self._hcl(hcl_raw)
        body = {"report": b64url_encode(hcl.hw_report)}
        with sync_client(timeout=self.timeout) as client:
            doc = _imds_json(client, "POST", f"{self.imds_url}/acc/tdquote", body)
        q = doc.get("quote") if isinstance(doc, dict) else None
        if not isinstance(q, str) or len(q) > _MAX_IMDS_BODY:
            raise ImdsError("IMDS tdquote response has no quote")
        try:
            td_quote = b64url_decode(q)
        except ValueError as exc:
            raise ImdsError("IMDS quote is not base64url") from exc
        return AzTdxEvidence(_EVIDENCE_VERSION, quote, hcl_raw, td_quote).to_json()

    async def get_evidence(self, report_data: bytes) -> Any:
        return await asyncio.to_thread(self._evidence, report_data)
