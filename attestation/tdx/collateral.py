"""DCAP collateral: the model (TCB info, QE identity, CRLs, issuer chains) and
its authenticity check.

Collateral is read in the JSON shape of dcap-qvl's ``QuoteCollateralV3``
(``pck_crl_issuer_chain``, ``root_ca_crl`` hex DER, ``pck_crl`` hex DER,
``tcb_info_issuer_chain``, ``tcb_info`` exact signed text, ``tcb_info_signature``
hex r||s, ``qe_identity_issuer_chain``, ``qe_identity``, ``qe_identity_signature``)
or assembled from raw Intel PCS/PCCS v4 responses
(:meth:`Collateral.from_pcs_responses`). Signed JSON objects are verified over
their exact bytes and only then parsed (:func:`verify_collateral`).

Where collateral comes from (a fixed bundle, a cache folder, a PCS/PCCS) is
:mod:`attestation.tdx.endorsements`; what it says about a quote's TCB is
:mod:`attestation.tdx.tcb`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.tdx.errors import CollateralError
from attestation.tdx.pck import (
    check_crl,
    check_crl_current,
    check_validity,
    load_pem_chain,
    verify_chain,
    verify_p256_raw,
)
from coco_common.fields import Fields
from coco_common.strict_json import strict_object

__all__ = [
    "MAX_COLLATERAL_SIZE",
    "STATUS_SEVERITY",
    "Collateral",
    "ModuleIdentity",
    "ModuleTcbLevel",
    "QeIdentity",
    "TcbInfo",
    "TcbLevel",
    "VerifiedCollateral",
    "verify_collateral",
]

MAX_COLLATERAL_SIZE = 256 * 1024

# --- field readers -------------------------------------------------------


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    return strict_object(text, limit=MAX_COLLATERAL_SIZE, error=CollateralError, what=what)


def _get(d: Any, key: str, typ: type, what: str) -> Any:
    """The required field ``key`` of the object ``d``, of type ``typ`` (no bool as int)."""
    return Fields(d, error=CollateralError, label=what).get(key, typ, required=True)


def _hex(s: str, what: str, length: int | None = None) -> bytes:
    try:
        b = bytes.fromhex(s)
    except ValueError as exc:
        raise CollateralError(f"{what}: not hex") from exc
    if length is not None and len(b) != length:
        raise CollateralError(f"{what}: expected {length} bytes, got {len(b)}")
    return b


def _time(s: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CollateralError(f"{what}: not an RFC 3339 time") from exc
    if t.tzinfo is None:
        raise CollateralError(f"{what}: time without zone")
    return t


# --- statuses -------------------------------------------------------------

#: TCB statuses, least to most severe (merging keeps the most severe)
STATUS_SEVERITY = {
    "UpToDate": 0,
    "SWHardeningNeeded": 1,
    "ConfigurationNeeded": 2,
    "ConfigurationAndSWHardeningNeeded": 3,
    "TDRelaunchAdvised": 3,
    "TDRelaunchAdvisedConfigurationNeeded": 3,
    "OutOfDate": 4,
    "OutOfDateConfigurationNeeded": 5,
    "Revoked": 6,
}


def _status(s: Any, what: str) -> str:
    if not isinstance(s, str) or s not in STATUS_SEVERITY:
        raise CollateralError(f"{what}: unknown TCB status {s!r}")
    return s


# --- parsed signed objects -----------------------------------------------


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]


def _advisories(d: dict[str, Any], what: str) -> tuple[str, ...]:
    ids = d.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CollateralError(f"{what}: advisoryIDs must be a list of strings")
    return tuple(ids)


def _components(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) != 16:
        raise CollateralError(f"{what}: expected 16 TCB components")
    out = []
    for c in v:
        if not isinstance(c, dict) or type(c.get("svn")) is not int or not 0 <= c["svn"] <= 255:
            raise CollateralError(f"{what}: TCB component without an svn")
        out.append(c["svn"])
    return tuple(out)


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tcb_levels: tuple[TcbLevel, ...]
    module_mrsigner: bytes | None
    module_attributes: bytes | None
    module_attributes_mask: bytes | None
    module_identities: tuple[ModuleIdentity, ...]

    @classmethod
    def from_signed_text(cls, text: str) -> TcbInfo:
        d = _object(text, "tcbInfo")
        w = "tcbInfo"
        tid = d.get("id", "SGX")  # v2 SGX TCB info has no id
        if not isinstance(tid, str):
            raise CollateralError("tcbInfo: id not a string")
        levels = []
        for lv in _get(d, "tcbLevels", list, w):
            if not isinstance(lv, dict):
                raise CollateralError("tcbInfo: tcbLevel not an object")
            tcb = _get(lv, "tcb", dict, w)
            tdx = tcb.get("tdxtcbcomponents")
            levels.append(
                TcbLevel(
                    sgx_components=_components(tcb.get("sgxtcbcomponents"), w),
                    pce_svn=_get(tcb, "pcesvn", int, w),
                    tdx_components=_components(tdx, w) if tdx is not None else (),
                    tcb_date=_get(lv, "tcbDate", str, w),
                    status=_status(lv.get("tcbStatus"), w),
                    advisory_ids=_advisories(lv, w),
                )
            )
        # Intel QVL order: highest first (components, then PCESVN, then TDX components)
        levels.sort(key=lambda lv: (lv.sgx_components, lv.pce_svn, lv.tdx_components), reverse=True)
        mod = d.get("tdxModule")
        idents = []
        for m in d.get("tdxModuleIdentities", []) or []:
            mlevels = tuple(
                ModuleTcbLevel(
                    isvsvn=_get(_get(ml, "tcb", dict, w), "isvsvn", int, w),
                    tcb_date=_get(ml, "tcbDate", str, w),
                    status=_status(ml.get("tcbStatus"), w),
                    advisory_ids=_advisories(ml, w),
                )
                for ml in _get(m, "tcbLevels", list, w)
            )
            idents.append(
                ModuleIdentity(
                    id=_get(m, "id", str, w),
                    mrsigner=_hex(_get(m, "mrsigner", str, w), "module mrsigner", 48),
                    attributes=_hex(_get(m, "attributes", str, w), "module attributes", 8),
                    attributes_mask=_hex(_get(m, "attributesMask", str, w), "module attributesMask", 8),
                    tcb_levels=mlevels,
                )
            )
        return cls(
            id=tid,
            version=_get(d, "version", int, w),
            issue_date=_time(_get(d, "issueDate", str, w), "tcbInfo issueDate"),
            next_update=_time(_get(d, "nextUpdate", str, w), "tcbInfo nextUpdate"),
            fmspc=_hex(_get(d, "fmspc", str, w), "tcbInfo fmspc", 6),
            pce_id=_hex(_get(d, "pceId", str, w), "tcbInfo pceId", 2),
            tcb_evaluation_data_number=_get(d, "tcbEvaluationDataNumber", int, w),
            tcb_levels=tuple(levels),
            module_mrsigner=_hex(_get(mod, "mrsigner", str, w), "tdxModule mrsigner", 48) if mod else None,
            module_attributes=_hex(_get(mod, "attributes", str, w), "tdxModule attributes", 8)
            if mod
            else None,
            module_attributes_mask=_hex(_get(mod, "attributesMask", str, w), "tdxModule mask", 8)
            if mod
            else None,
            module_identities=tuple(idents),
        )


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[ModuleTcbLevel, ...]

    @classmethod
    def from_signed_text(cls, text: str) -> QeIdentity:
        d = _object(text, "qeIdentity")
        w = "qeIdentity"
        levels = tuple(
            ModuleTcbLevel(
                isvsvn=_get(_get(lv, "tcb", dict, w), "isvsvn", int, w),
                tcb_date=_get(lv, "tcbDate", str, w),
                status=_status(lv.get("tcbStatus"), w),
                advisory_ids=_advisories(lv, w),
            )
            for lv in _get(d, "tcbLevels", list, w)
        )
        return cls(
            id=_get(d, "id", str, w),
            version=_get(d, "version", int, w),
            issue_date=_time(_get(d, "issueDate", str, w), "qeIdentity issueDate"),
            next_update=_time(_get(d, "nextUpdate", str, w), "qeIdentity nextUpdate"),
            tcb_evaluation_data_number=_get(d, "tcbEvaluationDataNumber", int, w),
            # hex of the little-endian MISCSELECT bytes, as QVL reads it
            miscselect=int.from_bytes(_hex(_get(d, "miscselect", str, w), "miscselect", 4), "little"),
            miscselect_mask=int.from_bytes(
                _hex(_get(d, "miscselectMask", str, w), "miscselectMask", 4), "little"
            ),
            attributes=_hex(_get(d, "attributes", str, w), "attributes", 16),
            attributes_mask=_hex(_get(d, "attributesMask", str, w), "attributesMask", 16),
            mrsigner=_hex(_get(d, "mrsigner", str, w), "mrsigner", 32),
            isvprodid=_get(d, "isvprodid", int, w),
            tcb_levels=tuple(sorted(levels, key=lambda lv: lv.isvsvn, reverse=True)),
        )


# --- the collateral bundle -----------------------------------------------

_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


def _inner_signed_text(untrusted_body: str, key: str) -> tuple[str, bytes]:
    """From a PCS body ``{"<key>": {...}, "signature": "<hex>"}`` return the exact
    text of the inner object (what Intel signed) and the signature."""
    outer = _object(untrusted_body, f"PCS {key} response")
    if set(outer) != {key, "signature"}:
        raise CollateralError(f"PCS {key} response must have exactly the keys {key!r} and 'signature'")
    m = re.search(r'"' + key + r'"\s*:\s*', untrusted_body)
    if m is None:
        raise CollateralError(f"PCS {key} response: key not found")
    try:
        _, end = json.JSONDecoder().raw_decode(untrusted_body, m.end())
    except ValueError as exc:
        raise CollateralError(f"PCS {key} response: bad inner object") from exc
    sig = _hex(_get(outer, "signature", str, key), f"{key} signature", 64)
    return untrusted_body[m.end() : end], sig


@dataclass(frozen=True)
class Collateral:
    """Unverified collateral for one FMSPC / CA / TEE type."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes | None
    pck_crl: bytes | None
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes

    @classmethod
    def from_json(cls, untrusted_text: str | bytes) -> Collateral:
        d = _object(untrusted_text, "collateral")
        extra = set(d) - set(_FIELDS) - {"pck_certificate_chain"}
        if extra:
            raise CollateralError(f"collateral: unknown keys {sorted(extra)}")
        w = "collateral"

        def crl(key: str) -> bytes | None:
            v = d.get(key)
            if v is None or v == "":
                return None
            if not isinstance(v, str):
                raise CollateralError(f"collateral: {key} must be hex")
            return _hex(v, key)

        return cls(
            pck_crl_issuer_chain=d.get("pck_crl_issuer_chain") or "",
            root_ca_crl=crl("root_ca_crl"),
            pck_crl=crl("pck_crl"),
            tcb_info_issuer_chain=_get(d, "tcb_info_issuer_chain", str, w),
            tcb_info=_get(d, "tcb_info", str, w),
            tcb_info_signature=_hex(_get(d, "tcb_info_signature", str, w), "tcb_info_signature", 64),
            qe_identity_issuer_chain=_get(d, "qe_identity_issuer_chain", str, w),
            qe_identity=_get(d, "qe_identity", str, w),
            qe_identity_signature=_hex(_get(d, "qe_identity_signature", str, w), "qe_identity_signature", 64),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
                "root_ca_crl": (self.root_ca_crl or b"").hex(),
                "pck_crl": (self.pck_crl or b"").hex(),
                "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
                "tcb_info": self.tcb_info,
                "tcb_info_signature": self.tcb_info_signature.hex(),
                "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
                "qe_identity": self.qe_identity,
                "qe_identity_signature": self.qe_identity_signature.hex(),
            }
        )

    @classmethod
    def from_pcs_responses(
        cls,
        *,
        tcb_info_body: str,
        tcb_info_issuer_chain: str,
        qe_identity_body: str,
        qe_identity_issuer_chain: str,
        pck_crl: bytes | None = None,
        pck_crl_issuer_chain: str = "",
        root_ca_crl: bytes | None = None,
    ) -> Collateral:
        tcb_text, tcb_sig = _inner_signed_text(tcb_info_body, "tcbInfo")
        qe_text, qe_sig = _inner_signed_text(qe_identity_body, "enclaveIdentity")
        return cls(
            pck_crl_issuer_chain=pck_crl_issuer_chain,
            root_ca_crl=root_ca_crl,
            pck_crl=pck_crl,
            tcb_info_issuer_chain=tcb_info_issuer_chain,
            tcb_info=tcb_text,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=qe_identity_issuer_chain,
            qe_identity=qe_text,
            qe_identity_signature=qe_sig,
        )


@dataclass(frozen=True)
class VerifiedCollateral:
    tcb_info: TcbInfo
    qe_identity: QeIdentity
    crls: tuple[x509.CertificateRevocationList, ...]


def _load_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CollateralError(f"{what}: not a DER CRL") from exc


@functools.lru_cache(maxsize=32)
def _verify_signatures(collateral: Collateral, root_der: bytes) -> _SignedCollateral:
    """Every signature, chain structure and revocation check of ``collateral``;
    nothing here depends on the time, so results are memoized (a KBS sees the
    same collateral for many quotes). Time checks are in :func:`verify_collateral`."""
    root = x509.load_der_x509_certificate(root_der)
    crls: list[x509.CertificateRevocationList] = []
    certs: list[tuple[x509.Certificate, str]] = [(root, "Intel SGX Root CA")]
    if collateral.root_ca_crl is not None:
        root_crl = _load_crl(collateral.root_ca_crl, "root CA CRL")
        check_crl(root_crl, root, None, "root CA CRL")
        crls.append(root_crl)
    if collateral.pck_crl is not None:
        pck_crl = _load_crl(collateral.pck_crl, "PCK CRL")
        if not collateral.pck_crl_issuer_chain:
            raise CollateralError("PCK CRL given without its issuer chain")
        chain = load_pem_chain(collateral.pck_crl_issuer_chain, "PCK CRL issuer chain")
        issuer = verify_chain(chain, root=root, now=None, crls=crls, what="PCK CRL issuer chain")
        certs += [(c, "PCK CRL issuer chain") for c in chain]
        check_crl(pck_crl, issuer, None, "PCK CRL")
        crls.append(pck_crl)

    leaves: dict[str, x509.Certificate] = {}  # TCB info and QE identity usually share one chain

    def signed(chain_pem: str, text: str, sig: bytes, what: str) -> None:
        leaf = leaves.get(chain_pem)
        if leaf is None:
            chain = load_pem_chain(chain_pem, f"{what} issuer chain")
            leaf = verify_chain(chain, root=root, now=None, crls=crls, what=f"{what} issuer chain")
            certs.extend((c, f"{what} issuer chain") for c in chain)
            leaves[chain_pem] = leaf
        verify_p256_raw(leaf.public_key(), sig, text.encode(), what)  # type: ignore[arg-type]

    signed(collateral.tcb_info_issuer_chain, collateral.tcb_info, collateral.tcb_info_signature, "TCB info")
    signed(
        collateral.qe_identity_issuer_chain,
        collateral.qe_identity,
        collateral.qe_identity_signature,
        "QE identity",
    )
    return _SignedCollateral(
        TcbInfo.from_signed_text(collateral.tcb_info),
        QeIdentity.from_signed_text(collateral.qe_identity),
        tuple(crls),
        tuple(certs),
    )


@dataclass(frozen=True)
class _SignedCollateral:
    tcb_info: TcbInfo
    qe_identity: QeIdentity
    crls: tuple[x509.CertificateRevocationList, ...]
    certs: tuple[tuple[x509.Certificate, str], ...]


def verify_collateral(collateral: Collateral, *, root: x509.Certificate, now: datetime) -> VerifiedCollateral:
    """Check every signature and chain in ``collateral`` against ``root`` and
    freshness at ``now`` (certificates, CRLs, TCB info, QE identity); return the
    parsed TCB info and QE identity."""
    s = _verify_signatures(collateral, root.public_bytes(Encoding.DER))
    for cert, what in s.certs:
        check_validity(cert, now, what)
    for i, crl in enumerate(s.crls):
        check_crl_current(
            crl, now, "root CA CRL" if i == 0 and collateral.root_ca_crl is not None else "PCK CRL"
        )
    tcb, qe = s.tcb_info, s.qe_identity
    for what, a, b in (
        ("TCB info", tcb.issue_date, tcb.next_update),
        ("QE identity", qe.issue_date, qe.next_update),
    ):
        if now < a:
            raise CollateralError(f"{what} issued after {now.isoformat()} (issueDate {a.isoformat()})")
        if now > b:
            raise CollateralError(f"{what} expired at {b.isoformat()}; fetch fresh collateral or pass a time")
    return VerifiedCollateral(tcb, qe, s.crls)
