"""Intel TDX (and SGX) DCAP quote verification, written in Python on
``cryptography``, with trust material and time passed in explicitly.

Why not build on dcap-qvl (PyPI 0.7.0, tried in this venv)? Its Python API
verifies only *with* full collateral: there is no authenticity-only mode
(quote signature, QE binding, PCK chain) for quotes whose collateral is not at
hand, and it rejects DEBUG TDs and TCB levels it cannot match inside the same
call, so a caller cannot separate authenticity from policy as
:mod:`attestation.verifier` requires. It is also opaque (Rust) about which
step failed. We keep dcap-qvl as an independent oracle instead: the tests
check that our TCB statuses and advisory IDs equal dcap-qvl's on every
fixture with collateral, and ``bench/tdx_verify.py`` compares speed.

Steps (:func:`verify_quote`): parse; header checks (ECDSA-P256 key, Intel QE
vendor); PCK chain to the pinned Intel SGX Root CA at ``now`` (with CRLs when
the collateral has them); QE report signature by the PCK key; QE report data
binding ``SHA-256(attestation key || QE auth data) || 0^32``; quote signature
by the attestation key over header+body. With collateral: collateral
signatures, chains, CRLs and freshness at ``now``, then the TCB status
(:func:`attestation.tdx.collateral.evaluate_tcb`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.eventlog.tcg import ParsedEventLog, parse_event_log
from attestation.tdx.collateral import (
    Collateral,
    CollateralCache,
    CollateralSource,
    PccsClient,
    StaticCollateral,
    TcbResult,
    evaluate_tcb,
    verify_collateral,
)
from attestation.tdx.pck import (
    PckExtension,
    intel_sgx_root_ca,
    load_pem_chain,
    parse_pck_extension,
    verify_chain,
    verify_p256_raw,
)
from attestation.tdx.quote import INTEL_QE_VENDOR_ID, Quote, TdReportBody
from coco_common.strict_json import strict_loads

__all__ = [
    "MAX_EVIDENCE_SIZE",
    "TdxVerifier",
    "VerifiedQuote",
    "pck_ca_kind",
    "quote_claims",
    "verify_quote",
]

MAX_EVIDENCE_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class VerifiedQuote:
    quote: Quote
    pck: PckExtension
    #: "platform" or "processor" (the PCK intermediate CA)
    pck_ca: str
    #: None when verified without collateral
    tcb: TcbResult | None


def pck_ca_kind(chain: list[x509.Certificate]) -> str:
    if len(chain) < 2:
        raise VerificationError("PCK chain has no intermediate CA")
    cns = chain[1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    if cn == "Intel SGX PCK Platform CA":
        return "platform"
    if cn == "Intel SGX PCK Processor CA":
        return "processor"
    raise VerificationError(f"unexpected PCK intermediate CA {cn!r}")


def verify_quote(
    untrusted_quote: bytes,
    *,
    root_ca: x509.Certificate,
    now: datetime,
    collateral: Collateral | None = None,
) -> VerifiedQuote:
    """Verify a DCAP quote's authenticity (and TCB status when ``collateral``
    is given) as of ``now``. Raises :class:`VerificationError` or
    :class:`EvidenceFormatError`; returns the verified quote."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        return _verify_quote(untrusted_quote, root_ca=root_ca, now=now, collateral=collateral)
    except (ValueError, TypeError, RecursionError) as exc:  # malformed certificates/keys inside cryptography
        raise EvidenceFormatError(
            f"malformed certificate or key material in the quote: {type(exc).__name__}"
        ) from exc


def _verify_quote(
    untrusted_quote: bytes, *, root_ca: x509.Certificate, now: datetime, collateral: Collateral | None
) -> VerifiedQuote:
    quote = Quote.from_bytes(untrusted_quote)
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError("quote is not from an Intel quoting enclave (QE vendor ID)")
    sd = quote.signature_data

    verified_coll = verify_collateral(collateral, root=root_ca, now=now) if collateral is not None else None

    chain = load_pem_chain(sd.certification_data.pck_chain_pem(), "PCK chain")
    pck_ca = pck_ca_kind(chain)
    leaf = verify_chain(
        chain,
        root=root_ca,
        now=now,
        crls=verified_coll.crls if verified_coll else (),
        what="PCK chain",
    )
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise VerificationError("PCK certificate key is not ECDSA")
    verify_p256_raw(pck_key, sd.qe_report_signature, sd.qe_report.raw, "QE report (by the PCK key)")

    expected = hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest() + bytes(32)
    if sd.qe_report.report_data != expected:
        raise VerificationError("QE report does not bind the attestation key (QE report data mismatch)")

    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + sd.attestation_key)
    except ValueError:
        raise VerificationError("attestation key is not a P-256 point") from None
    verify_p256_raw(att_key, sd.signature, quote.signed_bytes, "quote (by the attestation key)")

    pck = parse_pck_extension(leaf)
    tcb = evaluate_tcb(quote, pck, verified_coll) if verified_coll is not None else None
    return VerifiedQuote(quote=quote, pck=pck, pck_ca=pck_ca, tcb=tcb)


# --- claims ---------------------------------------------------------------


def _td_attribute_claims(body: TdReportBody) -> dict[str, bool]:
    a = body.td_attributes_int
    return {
        "debug": bool(a & 1),
        "septve_disable": bool(a & (1 << 28)),
        "protection_keys": bool(a & (1 << 30)),
        "key_locker": bool(a & (1 << 31)),
        "perfmon": bool(a & (1 << 63)),
    }


def quote_claims(v: VerifiedQuote, event_log: ParsedEventLog | None = None) -> dict[str, Any]:
    """Claims in trustee's TDX layout (``quote.header``/``quote.body`` hex
    fields, ``td_attributes``, ``report_data``, ``init_data``,
    ``uefi_event_logs``, ``platform_instance_id``) plus flat summary keys
    (``version``, ``mr_td``, ``rtmr0``.., ``debug``, ``tcb_status``, ...).

    ``platform_instance_id`` reproduces trustee's byte order, which is the
    reverse of the DER OCTET STRING in the PCK certificate (checked against
    trustee's parse_tdx_claims_expected.json)."""
    q = v.quote
    body = q.td_body
    h = q.header
    header = {
        "version": h.version.to_bytes(2, "little").hex(),
        "att_key_type": h.attestation_key_type.to_bytes(2, "little").hex(),
        "tee_type": h.tee_type.to_bytes(4, "little").hex(),
        "reserved": h.reserved.hex(),
        "vendor_id": h.qe_vendor_id.hex(),
        "user_data": h.user_data.hex(),
    }
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
    quote_map: dict[str, Any] = {"header": header, "body": qb}
    if h.version == 5:
        quote_map["type"] = int(q.body_type).to_bytes(2, "little").hex()
        size = 648 if body.tee_tcb_svn2 is not None else 584
        quote_map["size"] = size.to_bytes(4, "little").hex()
    claims: dict[str, Any] = {
        "quote": quote_map,
        "td_attributes": _td_attribute_claims(body),
        "report_data": body.report_data.hex(),
        "init_data": body.mr_config_id.hex(),
    }
    if event_log is not None:
        claims["uefi_event_logs"] = event_log.to_trustee_json()
    if v.pck.platform_instance_id is not None:
        claims["platform_instance_id"] = v.pck.platform_instance_id[::-1].hex()
    t = v.tcb
    claims.update(
        {
            "version": h.version,
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
    )
    return claims


# --- the KBS-facing verifier ----------------------------------------------


def _b64(s: Any, what: str, limit: int) -> bytes:
    if not isinstance(s, str):
        raise EvidenceFormatError(f"TDX evidence: {what} must be a base64 string")
    if len(s) > limit * 4 // 3 + 8:
        raise EvidenceFormatError(f"TDX evidence: {what} too large")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(f"TDX evidence: {what} is not standard base64") from None


def _regularize(data: bytes, size: int) -> bytes:
    """Zero-pad or truncate to ``size``, as trustee's ``regularize_data`` and Kata's
    ``adjustProperLength`` do (a SHA-512 init-data digest fills MRCONFIGID's 48 bytes
    with its first 48)."""
    return data[:size].ljust(size, b"\x00")


class TdxVerifier:
    """KBS-side verifier for tee ``"tdx"`` evidence
    ``{"cc_eventlog": <b64> | null, "quote": <b64>}`` (trustee's shape).

    ``collateral`` supplies TCB info / QE identity (a :class:`StaticCollateral`,
    a :class:`~attestation.tdx.collateral.PccsClient` with a cache, ...). With
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
            root_ca = load_pem_chain(Path(root_ca_pem).read_bytes(), "root CA file")[0]
        self._root = root_ca if root_ca is not None else intel_sgx_root_ca()
        if collateral is None and collateral_service:
            if collateral_service.startswith("file://"):
                path = Path(collateral_service.removeprefix("file://"))
                collateral = Collateral.from_json(path.read_bytes())
            else:
                cache = CollateralCache(collateral_cache_dir) if collateral_cache_dir else None
                collateral = PccsClient(collateral_service, cache=cache)
        self._source: CollateralSource | None = (
            StaticCollateral(collateral) if isinstance(collateral, Collateral) else collateral
        )
        self._require = require_collateral

    def _collateral_for(self, quote_bytes: bytes, now: datetime) -> Collateral | None:
        if self._source is None:
            return None
        q = Quote.from_bytes(quote_bytes)
        chain = load_pem_chain(q.signature_data.certification_data.pck_chain_pem(), "PCK chain")
        # unverified here: only selects which collateral to fetch; verify_quote checks everything
        try:
            pck = parse_pck_extension(chain[0])
            ca = pck_ca_kind(chain)
        except (ValueError, TypeError) as exc:
            raise EvidenceFormatError("malformed PCK certificate in the quote") from exc
        return self._source.get(fmspc=pck.fmspc, ca=ca, tdx=q.is_tdx, now=now)

    def verify_quote_bytes(self, untrusted_quote: bytes, *, now: datetime) -> VerifiedQuote:
        """Authenticity (and, with collateral, TCB status) of a raw quote with this
        verifier's root and collateral source; no report-data binding."""
        collateral = self._collateral_for(untrusted_quote, now)
        if collateral is None and self._require:
            raise VerificationError("no collateral available for this platform; cannot evaluate its TCB")
        return verify_quote(untrusted_quote, root_ca=self._root, now=now, collateral=collateral)

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        if isinstance(untrusted_evidence, (str, bytes)):
            if len(untrusted_evidence) > MAX_EVIDENCE_SIZE:
                raise EvidenceFormatError("TDX evidence too large")
            try:
                untrusted_evidence = strict_loads(untrusted_evidence)
            except ValueError as exc:
                raise EvidenceFormatError(f"TDX evidence is not JSON ({exc})") from exc
        if not isinstance(untrusted_evidence, Mapping):
            raise EvidenceFormatError("TDX evidence must be a JSON object")
        extra = set(untrusted_evidence) - {"cc_eventlog", "quote"}
        if extra or "quote" not in untrusted_evidence:
            raise EvidenceFormatError("TDX evidence must have 'quote' and optional 'cc_eventlog' only")
        quote_bytes = _b64(untrusted_evidence["quote"], "quote", 64 * 1024)
        if not quote_bytes:
            raise EvidenceFormatError("TDX evidence: empty quote")
        collateral = self._collateral_for(quote_bytes, now)
        if collateral is None and self._require:
            raise VerificationError("no collateral available for this platform; cannot evaluate its TCB")
        v = verify_quote(quote_bytes, root_ca=self._root, now=now, collateral=collateral)
        body = v.quote.td_body
        if _regularize(expected_report_data, 64) != body.report_data:
            raise VerificationError("REPORTDATA in the TDX quote does not match the expected report data")
        if expected_init_data_hash is not None and (
            _regularize(expected_init_data_hash, 48) != body.mr_config_id
        ):
            raise VerificationError("MRCONFIGID in the TDX quote does not match the init-data digest")
        el: ParsedEventLog | None = None
        raw_el = untrusted_evidence.get("cc_eventlog")
        if raw_el:
            el = parse_event_log(_b64(raw_el, "cc_eventlog", MAX_EVIDENCE_SIZE))
            el.check_registers({i + 1: body.rtmrs[i] for i in range(4)})
        return quote_claims(v, el)
