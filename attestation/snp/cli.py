"""``coco-verify snp REPORT [--vcek CERT] [--certs-dir DIR] [--at TIME]
[--expect-report-data HEX] [--policy FILE] [--kds] [--crl FILE] [--roots PEM]``

REPORT is raw report bytes (1184), hex text, or trustee SNP evidence JSON.
Authenticity is always checked (pinned AMD roots, certificate validity at
``--at`` or now); policy only with ``--policy``. Reports through the one
coco-verify verdict scheme (:mod:`attestation.verify_cli`): 0 verified and
policy-checked, 1 rejected, 2 usage error or unreadable input, 3 authentic but
no ``--policy`` was checked.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.x509.oid import NameOID

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.snp.certs import (
    MAX_CERT_FILE,
    EndorsementCert,
    ProductRoots,
    RevocationList,
    TrustStore,
    load_certificates,
)
from attestation.snp.endorsements import KdsClient
from attestation.snp.errors import CertificateExpired, EndorsementKeyUnavailable, SnpFormatError
from attestation.snp.evidence import MAX_EVIDENCE_JSON, SnpEvidence
from attestation.snp.kbs import SnpVerifier
from attestation.snp.policy import MAX_POLICY_FILE, SnpPolicy, validate
from attestation.snp.report import REPORT_SIZE, AttestationReport, Product
from attestation.snp.verify import check_binding, check_revocation, verify_report
from attestation.verify_cli import not_verified, parse_hex, parse_time, read_input, usage_error
from attestation.verify_cli import verified as report
from coco_common.http import sync_client

__all__ = ["configure", "load_report_input", "run"]

_HEX = frozenset(b"0123456789abcdefABCDEF \t\r\n")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Verify an AMD SEV-SNP attestation report against the pinned AMD roots."
    parser.add_argument("report", metavar="REPORT", help="raw report, hex text, or trustee SNP evidence JSON")
    parser.add_argument("--vcek", metavar="CERT", help="VCEK or VLEK certificate (DER or PEM)")
    parser.add_argument(
        "--certs-dir",
        metavar="DIR",
        help="folder of VCEK/VLEK certificates (also the KDS cache when --kds is given)",
    )
    parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument(
        "--expect-report-data", metavar="HEX", help="expected REPORT_DATA (<= 64 bytes, zero-padded)"
    )
    parser.add_argument(
        "--policy", metavar="FILE", help="appraisal policy JSON (keys: see docs/operator/coco-verify.md)"
    )
    parser.add_argument("--kds", action="store_true", help="allow fetching the VCEK from AMD KDS (network)")
    parser.add_argument(
        "--crl", metavar="FILE", help="AMD KDS CRL of the product (DER/PEM): reject revoked certificates"
    )
    parser.add_argument(
        "--roots",
        metavar="PEM",
        help="trust these ARK/ASK(/ASVK) certificates instead of the pinned AMD roots (testing only)",
    )


def load_report_input(data: bytes) -> SnpEvidence:
    """Raw bytes, hex text, or evidence JSON → :class:`SnpEvidence`."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        return SnpEvidence.from_json(stripped)
    if stripped and all(b in _HEX for b in stripped) and len(data) != REPORT_SIZE:
        try:
            raw = bytes.fromhex(stripped.decode("ascii"))
        except ValueError as exc:
            raise SnpFormatError("hex report text is malformed") from exc
        return SnpEvidence(AttestationReport.from_bytes(raw), None)
    return SnpEvidence(AttestationReport.from_bytes(data), None)


def _load_roots(pem: bytes) -> TrustStore:
    """Roots from a PEM bundle; the product of each ARK comes from its CN (``ARK-<Product>``)."""
    roots = {}
    for cert in load_certificates(pem):
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cn[0].value) if cn else ""
        if name.startswith("ARK-"):
            product = Product.from_name(name[4:])
            roots[product] = ProductRoots.from_pem(product, pem)
    if not roots:
        raise SnpFormatError("--roots holds no ARK-<Product> certificate")
    print(
        f"coco-verify snp: WARNING: trusting roots from {len(roots)} ARK(s) given with --roots",
        file=sys.stderr,
    )
    return TrustStore(roots)


def run(args: argparse.Namespace) -> int:
    try:
        now = parse_time(args.at) if args.at else datetime.now(UTC)
        evidence = load_report_input(read_input(args.report, MAX_EVIDENCE_JSON))
        endorsement = EndorsementCert.from_bytes(read_input(args.vcek, MAX_CERT_FILE)) if args.vcek else None
        expected = parse_hex(args.expect_report_data, "--expect-report-data", 64)
        policy = SnpPolicy.from_json(read_input(args.policy, MAX_POLICY_FILE)) if args.policy else None
        trust = _load_roots(read_input(args.roots, MAX_CERT_FILE)) if args.roots else None
        crl_bytes = read_input(args.crl, 4 * MAX_CERT_FILE) if args.crl else None
    except OSError as exc:
        return usage_error(
            "snp", f"cannot read input {exc.filename or ''}: {(exc.strerror or str(exc)).lower()}"
        )
    except EvidenceFormatError as exc:
        return usage_error("snp", f"malformed input: {exc}")
    except AttestationError as exc:  # e.g. a --roots bundle whose ARK does not sign its ASK
        return usage_error("snp", f"unusable trust material: {exc}")

    kds = None
    if args.certs_dir or args.kds:
        http = sync_client(trust_env=True) if args.kds else None  # AMD KDS, maybe behind a proxy
        kds = KdsClient(
            cache_dir=Path(args.certs_dir) if args.certs_dir else None, http=http, offline=not args.kds
        )
    verifier = SnpVerifier(kds=kds, required_vmpl=None, trust=trust)
    try:
        key = endorsement if endorsement is not None else verifier.endorsement_for(evidence)
        verified = verify_report(evidence.report, key, trust=verifier.trust, now=now)
        if crl_bytes is not None:
            crl = RevocationList.from_bytes(crl_bytes, verifier.trust.roots[verified.product])
            check_revocation(verified, crl, now=now)
        check_binding(verified, expected_report_data=expected)
        if policy is not None:
            validate(verified, policy)
    except EvidenceFormatError as exc:
        return usage_error("snp", f"malformed input: {exc}")
    except EndorsementKeyUnavailable as exc:
        if kds is None:  # no VCEK given and nowhere to look for one: no verdict possible
            return usage_error("snp", f"{exc} (pass --vcek CERT, --certs-dir DIR or --kds)")
        return not_verified("snp", f"rejected: {exc}")
    except CertificateExpired as exc:
        return not_verified("snp", f"rejected: {exc} (--at TIME verifies as of another time)")
    except AttestationError as exc:
        return not_verified("snp", f"rejected: {exc}")
    finally:
        if kds is not None and kds.http is not None:
            kds.http.close()
    key_kind = "VLEK" if verified.claims().get("signing_key") == "vlek" else "VCEK"
    why = f"{verified.product.value} report, {key_kind} chain to the AMD ARK, at {now.isoformat()}"
    if policy is not None:
        why += "; policy: checked"
    claims = {
        **verified.claims(),
        "verified_at": now.isoformat(),
        "chain": f"{key_kind} -> {'ASVK' if key_kind == 'VLEK' else 'ASK'} -> ARK ({verified.product.value})",
    }
    return report("snp", claims, why, unchecked=() if policy is not None else ("policy (no --policy)",))
