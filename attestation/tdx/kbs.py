"""The KBS-side TDX verifier (``tee = "tdx"``), implementing
:class:`attestation.verifier.EvidenceVerifier`, and the claims it puts in the
token (:func:`quote_claims`, trustee's TDX layout; also used by
``coco-verify tdx`` and the Azure TDX verifier).

:class:`TdxVerifier` parses trustee's evidence (:mod:`attestation.tdx.evidence`),
finds collateral (:mod:`attestation.tdx.endorsements`), verifies the quote
(:func:`attestation.tdx.verify.verify_quote`), checks the REPORTDATA and
MRCONFIGID bindings, replays the event log into the RTMRs and returns claims.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography import x509

from attestation._binding import resize
from attestation._files import read_config_file
from attestation.eventlog.tcg import ParsedEventLog, parse_event_log
from attestation.tdx.collateral import MAX_COLLATERAL_SIZE, Collateral
from attestation.tdx.endorsements import (
    CollateralCache,
    CollateralSource,
    PccsClient,
    StaticCollateral,
    collateral_for,
)
from attestation.tdx.errors import TdxVerificationError
from attestation.tdx.evidence import TdxEvidence
from attestation.tdx.pck import MAX_CHAIN_PEM, intel_sgx_root_ca, load_pem_chain
from attestation.tdx.quote import Quote, QuoteHeader, TdReportBody
from attestation.tdx.verify import VerifiedQuote, verify_quote

__all__ = ["TdxVerifier", "quote_claims"]


def _td_attribute_claims(body: TdReportBody) -> dict[str, bool]:
    a = body.td_attributes_int
    return {
        "debug": bool(a & 1),
        "septve_disable": bool(a & (1 << 28)),
        "protection_keys": bool(a & (1 << 30)),
        "key_locker": bool(a & (1 << 31)),
        "perfmon": bool(a & (1 << 63)),
    }


def _header_claims(h: QuoteHeader) -> dict[str, str]:
    """``quote.header``: the header fields as little-endian hex, as trustee prints them."""
    return {
        "version": h.version.to_bytes(2, "little").hex(),
        "att_key_type": h.attestation_key_type.to_bytes(2, "little").hex(),
        "tee_type": h.tee_type.to_bytes(4, "little").hex(),
        "reserved": h.reserved.hex(),
        "vendor_id": h.qe_vendor_id.hex(),
        "user_data": h.user_data.hex(),
    }


def _body_claims(body: TdReportBody) -> dict[str, str]:
    """``quote.body``: every TD report field as hex (TDX 1.5 adds two)."""
    qb: dict[str, str] = {
        "tcb_svn": body.tee_tcb_svn.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mrsigner_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "mr_td": body.mr_td.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "mr_owner": body.mr_owner.hex(),
        "mr_owner_config": body.mr_owner_config.hex(),
        "rtmr_0": body.rtmrs[0].hex(),
        "rtmr_1": body.rtmrs[1].hex(),
        "rtmr_2": body.rtmrs[2].hex(),
        "rtmr_3": body.rtmrs[3].hex(),
        "report_data": body.report_data.hex(),
    }
    if body.tee_tcb_svn2 is not None and body.mr_service_td is not None:
        qb["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        qb["mr_servicetd"] = body.mr_service_td.hex()
    return qb


def _quote_claims(q: Quote) -> dict[str, Any]:
    """trustee's ``quote`` map: header, body, and (v5) the body type and size."""
    body = q.td_body
    quote_map: dict[str, Any] = {"header": _header_claims(q.header), "body": _body_claims(body)}
    if q.header.version == 5:
        quote_map["type"] = int(q.body_type).to_bytes(2, "little").hex()
        size = 648 if body.tee_tcb_svn2 is not None else 584
        quote_map["size"] = size.to_bytes(4, "little").hex()
    return quote_map


def _summary_claims(v: VerifiedQuote) -> dict[str, Any]:
    """The flat keys next to trustee's layout: measurements, PCK facts, TCB status."""
    body = v.quote.td_body
    t = v.tcb
    return {
        "version": v.quote.header.version,
        "tee_type": "tdx",
        "mr_td": body.mr_td.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "rtmr0": body.rtmrs[0].hex(),
        "rtmr1": body.rtmrs[1].hex(),
        "rtmr2": body.rtmrs[2].hex(),
        "rtmr3": body.rtmrs[3].hex(),
        "debug": body.debug,
        "fmspc": v.pck.fmspc.hex(),
        "pck_ca": v.pck_ca,
        "sgx_type": {0: "Standard", 1: "Scalable", 2: "Scalable with Integrity"}.get(
            v.pck.sgx_type, f"Unknown ({v.pck.sgx_type})"
        ),
        "tcb_status": t.status if t else None,
        # trustee's DCAP claim: "0" = the collateral is within its validity (expired collateral
        # is refused here, so with a TCB status it is always "0")
        "collateral_expiration_status": "0" if t else None,
        "advisory_ids": list(t.advisory_ids) if t else None,
        "tcb_date": t.tcb_date if t else None,
        "platform_tcb_status": t.platform_status if t else None,
        "qe_tcb_status": t.qe_status if t else None,
        "tdx_module_tcb_status": t.module_status if t else None,
        "tcb_eval_num": t.tcb_evaluation_data_number if t else None,
    }


def quote_claims(v: VerifiedQuote, event_log: ParsedEventLog | None = None) -> dict[str, Any]:
    """Claims in trustee's TDX layout (``quote.header``/``quote.body`` hex
    fields, ``td_attributes``, ``report_data``, ``init_data``,
    ``uefi_event_logs``, ``platform_instance_id``) plus flat summary keys
    (``version``, ``mr_td``, ``rtmr0``.., ``debug``, ``tcb_status``, ...).

    ``platform_instance_id`` reproduces trustee's byte order, which is the
    reverse of the DER OCTET STRING in the PCK certificate (checked against
    trustee's parse_tdx_claims_expected.json)."""
    body = v.quote.td_body
    claims: dict[str, Any] = {
        "quote": _quote_claims(v.quote),
        "td_attributes": _td_attribute_claims(body),
        "report_data": body.report_data.hex(),
        "init_data": body.mr_config_id.hex(),
    }
    if event_log is not None:
        claims["uefi_event_logs"] = event_log.to_trustee_json()
    if v.pck.platform_instance_id is not None:
        claims["platform_instance_id"] = v.pck.platform_instance_id[::-1].hex()
    claims.update(_summary_claims(v))
    return claims


class TdxVerifier:
    """KBS-side verifier for tee ``"tdx"`` evidence
    ``{"cc_eventlog": <b64> | null, "quote": <b64>}`` (trustee's shape).

    ``collateral`` supplies TCB info / QE identity (a :class:`StaticCollateral`,
    a :class:`~attestation.tdx.endorsements.PccsClient` with a cache, ...). With
    ``require_collateral`` a quote whose collateral is unavailable is rejected;
    otherwise it verifies without a TCB status (``tcb_status: null``).

    Config-file friendly alternatives (the reference KBS passes its
    ``[tdx]`` options as keyword arguments): ``collateral_service`` (a PCS/PCCS
    base URL, as trustee's QCNL ``collateral_service``, or ``file:///path`` to a
    collateral JSON file), ``collateral_cache_dir``, ``root_ca_pem`` (a PEM file
    replacing the packaged Intel SGX Root CA; for test PKIs only).
    """

    tee = "tdx"

    def __init__(
        self,
        *,
        root_ca: x509.Certificate | None = None,
        collateral: CollateralSource | Collateral | None = None,
        require_collateral: bool = False,
        collateral_service: str | None = None,
        collateral_cache_dir: str | None = None,
        root_ca_pem: str | None = None,
    ) -> None:
        if root_ca is None and root_ca_pem is not None:
            root_ca = load_pem_chain(
                read_config_file(root_ca_pem, MAX_CHAIN_PEM, "TDX root CA"), "root CA file"
            )[0]
        self._root = root_ca if root_ca is not None else intel_sgx_root_ca()
        if collateral is None and collateral_service:
            if collateral_service.startswith("file://"):
                path = collateral_service.removeprefix("file://")
                collateral = Collateral.from_json(
                    read_config_file(path, MAX_COLLATERAL_SIZE, "TDX collateral")
                )
            else:
                cache = CollateralCache(collateral_cache_dir) if collateral_cache_dir else None
                collateral = PccsClient(collateral_service, cache=cache)
        self._source: CollateralSource | None = (
            StaticCollateral(collateral) if isinstance(collateral, Collateral) else collateral
        )
        self._require = require_collateral

    def verify_quote_bytes(self, untrusted_quote: bytes, *, now: datetime) -> VerifiedQuote:
        """Authenticity (and, with collateral, TCB status) of a raw quote with this
        verifier's root and collateral source; no report-data binding."""
        collateral = collateral_for(self._source, untrusted_quote, now=now) if self._source else None
        if collateral is None and self._require:
            raise TdxVerificationError("no collateral available for this platform; cannot evaluate its TCB")
        return verify_quote(untrusted_quote, root_ca=self._root, now=now, collateral=collateral)

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        evidence = TdxEvidence.from_json(untrusted_evidence)
        v = self.verify_quote_bytes(evidence.quote, now=now)
        body = v.quote.td_body
        if resize(expected_report_data, 64) != body.report_data:
            raise TdxVerificationError("REPORTDATA in the TDX quote does not match the expected report data")
        if expected_init_data_hash is not None and (
            # a SHA-512 init-data digest fills MRCONFIGID's 48 bytes with its first 48
            resize(expected_init_data_hash, 48) != body.mr_config_id
        ):
            raise TdxVerificationError("MRCONFIGID in the TDX quote does not match the init-data digest")
        el: ParsedEventLog | None = None
        if evidence.cc_eventlog is not None:
            el = parse_event_log(evidence.cc_eventlog)
            el.check_registers({i + 1: body.rtmrs[i] for i in range(4)})
        return quote_claims(v, el)
