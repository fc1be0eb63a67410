"""The KBS adapter for ``sgx``: trustee's evidence ``{"quote": base64}``
holding an SGX DCAP quote (version 3), verified by
:func:`attestation.tdx.verify.verify_quote` (PCK chain to the Intel SGX Root
CA, QE binding, quote signature; TCB status when collateral is configured).

Bindings (trustee): REPORT_DATA equals the expected report data zero-padded to
64 bytes; CONFIGID equals the init-data digest zero-padded to 64 bytes.
Claims: trustee's ``header``/``body`` hex maps, ``report_data``,
``init_data`` (CONFIGID), ``platform_instance_id`` when the PCK has one, and
the TCB summary (``tcb_status``, ``advisory_ids``, ...).
"""

from __future__ import annotations

import hmac
import logging
import struct
from datetime import datetime
from typing import Any

from attestation._binding import resize
from attestation.replay import BindingSkip
from attestation.sgx.errors import SgxFormatError, SgxVerificationError
from attestation.sgx.evidence import evidence_quote
from attestation.sgx.verify import verify_sgx_quote
from attestation.tdx.kbs import TdxVerifier
from attestation.tdx.quote import EnclaveReport
from attestation.tdx.verify import VerifiedQuote

__all__ = ["SgxVerifier", "sgx_claims"]

log = logging.getLogger(__name__)


def sgx_claims(v: VerifiedQuote) -> dict[str, Any]:
    q = v.quote
    if not isinstance(q.body, EnclaveReport):
        raise SgxFormatError("not an SGX quote")
    h, b = q.header, q.body.raw
    header = {
        "version": struct.pack("<H", h.version).hex(),
        "att_key_type": struct.pack("<H", h.attestation_key_type).hex(),
        "att_key_data_0": struct.pack("<I", h.tee_type).hex(),
        "qe_svn": h.reserved[:2].hex(),
        "pce_svn": h.reserved[2:].hex(),
        "vendor_id": h.qe_vendor_id.hex(),
        "user_data": h.user_data.hex(),
    }
    # SGX REPORT body layout (Intel SDK sgx_report_body_t)
    fields = [
        ("cpu_svn", 0, 16),
        ("misc_select", 16, 4),
        ("reserved1", 20, 12),
        ("isv_ext_prod_id", 32, 16),
        ("attributes.flags", 48, 8),
        ("attributes.xfrm", 56, 8),
        ("mr_enclave", 64, 32),
        ("reserved2", 96, 32),
        ("mr_signer", 128, 32),
        ("reserved3", 160, 32),
        ("config_id", 192, 64),
        ("isv_prod_id", 256, 2),
        ("isv_svn", 258, 2),
        ("config_svn", 260, 2),
        ("reserved4", 262, 42),
        ("isv_family_id", 304, 16),
        ("report_data", 320, 64),
    ]
    body = {name: b[off : off + size].hex() for name, off, size in fields}
    claims: dict[str, Any] = {
        "header": header,
        "body": body,
        "report_data": body["report_data"],
        "init_data": body["config_id"],
    }
    if v.pck.platform_instance_id is not None:
        # the byte order trustee produces (see attestation.tdx.kbs.quote_claims)
        claims["platform_instance_id"] = v.pck.platform_instance_id[::-1].hex()
    t = v.tcb
    claims.update(
        {
            "tee_type": "sgx",
            "debug": q.body.debug,
            "fmspc": v.pck.fmspc.hex(),
            "tcb_status": t.status if t else None,
            "advisory_ids": list(t.advisory_ids) if t else None,
            "tcb_date": t.tcb_date if t else None,
        }
    )
    return claims


class SgxVerifier:
    """Verify ``sgx`` evidence; keyword options are :class:`TdxVerifier`'s
    (``collateral``, ``collateral_service``, ``require_collateral``, ``root_ca_pem``, ...)."""

    tee = "sgx"

    def __init__(self, *, insecure_skip_report_data_binding: str | None = None, **dcap_options: Any) -> None:
        """``insecure_skip_report_data_binding``: TEST ONLY, a reason; REPORT_DATA is not
        compared (recorded quotes in a live handshake); logged and marked in the claims."""
        self.dcap = TdxVerifier(**dcap_options)
        self._insecure = BindingSkip(
            insecure_skip_report_data_binding, tee=self.tee, what="REPORT_DATA binding"
        )

    def verify_evidence(self, untrusted_evidence: Any, *, now: datetime) -> VerifiedQuote:
        return verify_sgx_quote(evidence_quote(untrusted_evidence), dcap=self.dcap, now=now)

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        v = self.verify_evidence(untrusted_evidence, now=now)
        body = v.quote.body
        assert isinstance(body, EnclaveReport)
        expected = self._insecure.expected(expected_report_data)
        if expected is not None and not hmac.compare_digest(resize(expected, 64), body.report_data):
            raise SgxVerificationError("REPORT_DATA is different from that in SGX Quote")
        if expected_init_data_hash is not None and not hmac.compare_digest(
            resize(expected_init_data_hash, 64), body.raw[192:256]
        ):
            raise SgxVerificationError("CONFIGID is different from that in SGX Quote")
        return self._insecure.mark(sgx_claims(v))
