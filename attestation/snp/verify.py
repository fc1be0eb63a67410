"""Verify an SNP report's authenticity against pinned AMD roots at a given time.

:func:`verify_report` checks, in this order: the signing-key kind the report
claims, the product (from CPUID for v3+, from the chain for v2), the chain
ARK → ASK/ASVK → VCEK/VLEK (RSASSA-PSS/SHA-384), the validity of every
certificate at ``now``, the ECDSA P-384/SHA-384 signature over bytes
0x000..0x29F, the VCEK/VLEK TCB extensions against REPORTED_TCB (with fmcSPL
on Turin), and the VCEK hwID against CHIP_ID. It returns a
:class:`VerifiedReport` or raises a specific
:class:`~attestation.snp.errors.SnpVerificationError`.

:func:`check_binding` then compares REPORT_DATA and HOST_DATA with the values
the relying party expects. Policy (minimum TCB, measurements, debug, VMPL) is
:mod:`attestation.snp.policy`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation._binding import resize
from attestation.snp.certs import EndorsementCert, RevocationList, TrustStore, check_validity
from attestation.snp.errors import (
    CertChainInvalid,
    CertificateExpired,
    CertificateRevoked,
    ChipIdMismatch,
    HostDataMismatch,
    ReportDataMismatch,
    ReportSignatureInvalid,
    SigningKeyMismatch,
    SnpFormatError,
    TcbMismatch,
    WrongProductRoot,
)
from attestation.snp.report import AttestationReport, Product, SigningKey

__all__ = [
    "VerifiedReport",
    "check_binding",
    "check_revocation",
    "verify_report",
]

_ECDSA_P384_SHA384 = 1
_P384_ORDER = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
)


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature and chain verified at ``verified_at``."""

    report: AttestationReport
    product: Product
    signing_key: SigningKey
    endorsement: EndorsementCert
    intermediate: x509.Certificate
    ark: x509.Certificate
    verified_at: datetime

    def claims(self) -> dict[str, Any]:
        """Human/CLI claims: byte fields as lowercase hex."""
        r = self.report
        return {
            "tee": "snp",
            "version": r.version,
            "product": self.product.value,
            "signing_key": self.signing_key.name.lower(),
            "debug": r.policy.debug,
            "vmpl": r.vmpl,
            "guest_svn": r.guest_svn,
            "measurement": r.measurement.hex(),
            "report_data": r.report_data.hex(),
            "host_data": r.host_data.hex(),
            "chip_id": r.chip_id.hex(),
            "family_id": r.family_id.hex(),
            "image_id": r.image_id.hex(),
            "id_key_digest": r.id_key_digest.hex(),
            "author_key_digest": r.author_key_digest.hex(),
            "report_id": r.report_id.hex(),
            "report_id_ma": r.report_id_ma.hex(),
            "policy": r.policy.to_json(),
            "platform_info": r.platform_info.to_json(),
            "key_info": {
                "raw": f"{r.key_info.raw:#x}",
                "author_key_en": r.key_info.author_key_en,
                "mask_chip_key": r.key_info.mask_chip_key,
                "signing_key": r.key_info.signing_key_raw,
            },
            "reported_tcb": r.reported_tcb.to_json(),
            "current_tcb": r.current_tcb.to_json(),
            "committed_tcb": r.committed_tcb.to_json(),
            "launch_tcb": r.launch_tcb.to_json(),
            "current_firmware": str(r.current),
            "committed_firmware": str(r.committed),
            "cpuid": None
            if r.cpuid_fam_id is None
            else {"family": r.cpuid_fam_id, "model": r.cpuid_mod_id, "stepping": r.cpuid_step},
            "launch_mit_vector": r.launch_mit_vector,
            "current_mit_vector": r.current_mit_vector,
            "endorsement": {
                "product_name": self.endorsement.product_name,
                "csp_id": self.endorsement.csp_id,
                "not_after": self.endorsement.cert.not_valid_after_utc.isoformat(),
            },
        }

    def trustee_claims(self) -> dict[str, Any]:
        """Claims as current trustee's SNP verifier names and types them
        (``parse_tee_evidence``): booleans and integers as JSON values, byte
        fields as lowercase hex; plus ``reported_tcb_fmc`` on Turin and a few
        extra identifying fields (not in trustee)."""
        r = self.report
        out: dict[str, Any] = {
            "tee_type": "snp",
            "policy_abi_major": r.policy.abi_major,
            "policy_abi_minor": r.policy.abi_minor,
            "policy_smt_allowed": r.policy.smt_allowed,
            "policy_migrate_ma": r.policy.migrate_ma,
            "policy_debug_allowed": r.policy.debug,
            "policy_single_socket": r.policy.single_socket,
            "reported_tcb_bootloader": r.reported_tcb.bootloader,
            "reported_tcb_tee": r.reported_tcb.tee,
            "reported_tcb_snp": r.reported_tcb.snp,
            "reported_tcb_microcode": r.reported_tcb.microcode,
            "platform_tsme_enabled": r.platform_info.tsme_enabled,
            "platform_smt_enabled": r.platform_info.smt_enabled,
            "measurement": r.measurement.hex(),
            "report_data": r.report_data.hex(),
            "init_data": r.host_data.hex(),
            # extras (not in trustee): identify what was verified
            "report_version": r.version,
            "vmpl": r.vmpl,
            "guest_svn": r.guest_svn,
            "product": self.product.value,
            "signing_key": self.signing_key.name.lower(),
            "chip_id": r.chip_id.hex(),
            "firmware_version": str(r.current),
        }
        if r.reported_tcb.fmc is not None:
            out["reported_tcb_fmc"] = r.reported_tcb.fmc
        return out


def _pick_product(
    report: AttestationReport, endorsement: EndorsementCert, trust: TrustStore
) -> tuple[Product, x509.Certificate]:
    kind = endorsement.kind
    label = "ASK" if kind is SigningKey.VCEK else "ASVK"
    cert_product: Product | None = None
    if endorsement.product_name:
        try:
            cert_product = Product.from_name(endorsement.product_name)
        except SnpFormatError:
            cert_product = None
    wanted = report.product or cert_product
    candidates = [wanted] if wanted is not None else list(trust.roots)

    chosen: tuple[Product, x509.Certificate] | None = None
    for p in candidates:
        roots = trust.roots.get(p)
        inter = roots.intermediate(kind) if roots else None
        if inter is not None and trust.signed_by(endorsement.cert, inter, endorsement.fingerprint):
            chosen = (p, inter)
            break
    if chosen is None:
        for p, roots in trust.roots.items():
            inter = roots.intermediate(kind)
            if (
                p not in candidates
                and inter is not None
                and trust.signed_by(endorsement.cert, inter, endorsement.fingerprint)
            ):
                claimed = wanted.value if wanted else "?"
                raise WrongProductRoot(
                    f"{kind.name} chains to the {p.value} root, but the report is from {claimed}"
                )
        where = f"{label}-{wanted.value}" if wanted else f"any pinned {label}"
        raise CertChainInvalid(f"{kind.name} certificate signature does not verify under {where}")
    product, inter = chosen
    if cert_product is not None and cert_product is not product:
        raise WrongProductRoot(
            f"{kind.name} productName says {cert_product.value}, the chain says {product.value}"
        )
    if report.version < 3 and product is Product.TURIN:
        raise WrongProductRoot("a version 2 report cannot come from Turin firmware")
    return product, inter


def verify_report(
    report: AttestationReport,
    endorsement: EndorsementCert,
    *,
    trust: TrustStore,
    now: datetime,
) -> VerifiedReport:
    """Verify ``report`` was signed by ``endorsement``, which chains to a pinned root,
    with every certificate valid at ``now``. Raises an ``SnpVerificationError`` subclass."""
    sk = report.key_info.signing_key
    if sk is None or sk is SigningKey.NONE:
        raise SigningKeyMismatch(
            f"report KEY_INFO.SIGNING_KEY={report.key_info.signing_key_raw}: not signed by VCEK/VLEK"
        )
    if sk is not endorsement.kind:
        raise SigningKeyMismatch(
            f"report says it is signed by the {sk.name}, but a {endorsement.kind.name} was given"
        )
    if report.signature_algo != _ECDSA_P384_SHA384:
        raise ReportSignatureInvalid(
            f"unsupported SIGNATURE_ALGO {report.signature_algo} (only 1, ECDSA P-384)"
        )

    product, inter = _pick_product(report, endorsement, trust)
    ark = trust.roots[product].ark
    if not trust.signed_by(ark, ark) or not trust.signed_by(inter, ark):
        raise CertChainInvalid(
            f"pinned {product.value} intermediate does not verify under ARK-{product.value}"
        )
    check_validity(ark, now, f"ARK-{product.value}")
    check_validity(inter, now, f"{'ASK' if sk is SigningKey.VCEK else 'ASVK'}-{product.value}")
    check_validity(endorsement.cert, now, sk.name)

    tcb = report.reported_tcb
    pairs: list[tuple[str, int | None, int | None]] = [
        ("bootloader", tcb.bootloader, endorsement.bootloader),
        ("tee", tcb.tee, endorsement.tee),
        ("snp", tcb.snp, endorsement.snp),
        ("microcode", tcb.microcode, endorsement.microcode),
    ]
    if product.turin_like:
        pairs.append(("fmc", tcb.fmc, endorsement.fmc))
    for name, in_report, in_cert in pairs:
        if in_report != in_cert:
            raise TcbMismatch(f"REPORTED_TCB {name}={in_report} but the {sk.name} is for {name}={in_cert}")

    if sk is SigningKey.VCEK:
        hwid = endorsement.hwid or b""
        if product.turin_like:
            ok = (
                len(hwid) in (8, 64)
                and not any(hwid[8:])
                and hmac.compare_digest(hwid[:8], report.chip_id[:8])
            )
        else:
            ok = len(hwid) == 64 and hmac.compare_digest(hwid, report.chip_id)
        if not ok:
            raise ChipIdMismatch("VCEK hwID does not match the report's CHIP_ID (VCEK of another chip)")

    sig = report.signature
    if not (0 < sig.r < _P384_ORDER and 0 < sig.s < _P384_ORDER):
        raise ReportSignatureInvalid("report signature r/s out of range")
    try:
        endorsement.public_key.verify(
            encode_dss_signature(sig.r, sig.s), report.signed_bytes, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature as exc:
        raise ReportSignatureInvalid(f"report signature does not verify with the {sk.name}") from exc

    return VerifiedReport(report, product, sk, endorsement, inter, ark, now)


def check_revocation(verified: VerifiedReport, crl: RevocationList, *, now: datetime) -> None:
    """Reject if the ASK/ASVK or the VCEK/VLEK is on ``crl`` (the product's
    KDS CRL, already checked to be signed by its ARK), or if ``crl`` is out of
    date at ``now`` (a stale CRL cannot vouch for anything: fail closed)."""
    if crl.product is not verified.product:
        raise CertChainInvalid(f"CRL is for {crl.product.value}, the report is from {verified.product.value}")
    if now < crl.last_update or (crl.next_update is not None and now > crl.next_update):
        raise CertificateExpired(
            f"the {crl.product.value} CRL is not current at {now.isoformat()}; fetch a new one"
        )
    for what, cert in (
        ("intermediate", verified.intermediate),
        (verified.signing_key.name, verified.endorsement.cert),
    ):
        if cert.serial_number in crl.revoked_serials:
            raise CertificateRevoked(
                f"the {what} certificate is revoked by AMD ({verified.product.value} CRL)"
            )


def check_binding(
    verified: VerifiedReport,
    *,
    expected_report_data: bytes | None = None,
    expected_init_data_hash: bytes | None = None,
) -> None:
    """REPORT_DATA must equal ``expected_report_data`` zero-padded to 64 bytes;
    HOST_DATA must equal ``expected_init_data_hash`` resized to 32 bytes."""
    r = verified.report
    if expected_report_data is not None:
        if len(expected_report_data) > 64:
            raise ReportDataMismatch("expected report data is longer than 64 bytes")
        if not hmac.compare_digest(resize(expected_report_data, 64), r.report_data):
            raise ReportDataMismatch(
                "REPORT_DATA does not match the expected value (stale or replayed evidence?): "
                f"expected {resize(expected_report_data, 64).hex()}, report has {r.report_data.hex()}"
            )
    if expected_init_data_hash is not None and not hmac.compare_digest(
        resize(expected_init_data_hash, 32), r.host_data
    ):
        raise HostDataMismatch("HOST_DATA does not match the init-data digest")
