"""``coco-verify nvidia``: verify NVIDIA GPU / NVSwitch attestation evidence offline.

REPORT is a raw report, the report as hex/base64 text (then --cert-chain is
required), or an evidence JSON in the guest-components
(``{"device_evidence_list": [...]}``) or NVIDIA SDK (list) shape. Prints
``{"devices": [claims...]}`` through the one coco-verify verdict scheme
(:mod:`attestation.verify_cli`): 0 verified with nonce, RIMs and policy
checked, 1 not authentic / policy, 2 unreadable input, 3 authentic but not
fully checked.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import httpx

from attestation.errors import AttestationError, EvidenceFormatError, PolicyViolation
from attestation.nvidia.certs import MAX_CHAIN_SIZE, arch_of_leaf, load_pem_chain
from attestation.nvidia.endorsements import (
    DEFAULT_OCSP_URL,
    DEFAULT_RIM_SERVICE_URL,
    HttpOcspChecker,
    RimFiles,
    RimService,
)
from attestation.nvidia.errors import NvidiaFormatError
from attestation.nvidia.evidence import (
    MAX_EVIDENCE_JSON_SIZE,
    DeviceEvidence,
    decode_report_text,
    parse_evidence,
)
from attestation.nvidia.policy import MAX_POLICY_SIZE, NvidiaPolicy
from attestation.nvidia.rim import MAX_RIM_SIZE
from attestation.nvidia.verify import OcspChecker, RimProvider, TrustAnchors, verify_device
from attestation.verify_cli import not_verified, parse_time, read_input, usage_error, verified
from coco_common.http import sync_client

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", metavar="REPORT", help="report (raw, hex, base64) or evidence JSON file")
    parser.add_argument("--cert-chain", metavar="PEM", help="device certificate chain (leaf first)")
    parser.add_argument("--nonce", metavar="HEX", help="expected 32-byte nonce in hex")
    parser.add_argument("--rim", metavar="FILE", action="append", default=[], help="RIM file (repeatable)")
    parser.add_argument(
        "--rim-service",
        metavar="URL",
        nargs="?",
        const=DEFAULT_RIM_SERVICE_URL,
        help=f"fetch RIMs from a RIM service (default URL {DEFAULT_RIM_SERVICE_URL})",
    )
    parser.add_argument(
        "--ocsp",
        metavar="URL",
        nargs="?",
        const=DEFAULT_OCSP_URL,
        help=f"check certificate status with OCSP (default responder {DEFAULT_OCSP_URL})",
    )
    parser.add_argument("--at", metavar="TIME", help="verify as of this ISO 8601 time (default: now)")
    parser.add_argument(
        "--policy", metavar="FILE", help="JSON appraisal policy (see attestation.nvidia.policy)"
    )
    parser.add_argument("--device-root", metavar="PEM", help="device root CA (default: packaged NVIDIA root)")
    parser.add_argument("--rim-root", metavar="PEM", help="RIM root CA (default: packaged NVIDIA root)")


def _read(path: str, limit: int, what: str) -> bytes:
    """:func:`~attestation.verify_cli.read_input`, its errors naming ``what``."""
    try:
        return read_input(path, limit)
    except OSError as exc:
        raise NvidiaFormatError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except EvidenceFormatError as exc:
        raise NvidiaFormatError(f"{what} {path} is larger than {limit} bytes") from exc


def _load_devices(args: argparse.Namespace) -> tuple[DeviceEvidence, ...]:
    untrusted = _read(args.report, MAX_EVIDENCE_JSON_SIZE, "report")
    if untrusted[:2] == b"\x11\xe0":
        report = untrusted
    else:
        try:
            text = untrusted.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise NvidiaFormatError("REPORT is neither a raw report nor text") from exc
        if text[:1] in ("{", "["):
            if args.cert_chain:
                raise NvidiaFormatError("--cert-chain is not used with an evidence JSON")
            return parse_evidence(text)
        report = decode_report_text(text)
    if not args.cert_chain:
        raise NvidiaFormatError("--cert-chain is required with a bare report")
    pem = _read(args.cert_chain, MAX_CHAIN_SIZE, "certificate chain")
    chain = load_pem_chain(pem)
    if not chain:
        raise NvidiaFormatError("certificate chain is empty")
    try:
        arch = arch_of_leaf(chain[0])
    except AttestationError:
        arch = "UNKNOWN"
    return (DeviceEvidence(arch=arch, uuid=None, report=report, cert_chain_pem=pem),)


def _anchors(args: argparse.Namespace) -> TrustAnchors:
    anchors = TrustAnchors.nvidia()
    if args.device_root or args.rim_root:
        dev = anchors.device_root
        rim = anchors.rim_root
        if args.device_root:
            dev = load_pem_chain(_read(args.device_root, MAX_CHAIN_SIZE, "device root"))[0]
        if args.rim_root:
            rim = load_pem_chain(_read(args.rim_root, MAX_CHAIN_SIZE, "RIM root"))[0]
        anchors = TrustAnchors(device_root=dev, rim_root=rim)
    return anchors


def _verify(args: argparse.Namespace, client: httpx.Client | None) -> dict[str, object]:
    now = parse_time(args.at) if args.at else datetime.now(UTC)
    nonce: bytes | None = None
    if args.nonce:
        try:
            nonce = bytes.fromhex(args.nonce)
        except ValueError as exc:
            raise NvidiaFormatError("--nonce is not hex") from exc
        if len(nonce) != 32:
            raise NvidiaFormatError("--nonce must be 32 bytes (64 hex digits)")
    devices = _load_devices(args)
    rims: RimProvider | None = None
    if args.rim and args.rim_service:
        raise NvidiaFormatError("use either --rim or --rim-service")
    if args.rim:
        rims = RimFiles(tuple(_read(p, MAX_RIM_SIZE, "RIM") for p in args.rim))
    elif args.rim_service and client is not None:
        rims = RimService(client=client, base_url=args.rim_service.rstrip("/") + "/")
    ocsp: OcspChecker | None = None
    if args.ocsp and client is not None:
        ocsp = HttpOcspChecker(client=client, url=args.ocsp)
    policy = NvidiaPolicy.from_json(_read(args.policy, MAX_POLICY_SIZE, "policy")) if args.policy else None
    anchors = _anchors(args)
    verified = [
        verify_device(d, expected_nonce=nonce, anchors=anchors, now=now, rims=rims, ocsp=ocsp)
        for d in devices
    ]
    if policy is not None:
        policy.check(verified)
    return {"tee": "nvidia", "verified_at": now.isoformat(), "devices": [v.claims() for v in verified]}


def run(args: argparse.Namespace) -> int:
    try:
        if args.rim_service or args.ocsp:
            with sync_client(timeout=30.0, trust_env=True) as client:
                result = _verify(args, client)
        else:
            result = _verify(args, None)
    except EvidenceFormatError as exc:
        return usage_error("nvidia", f"unreadable input: {exc}")
    except PolicyViolation as exc:
        return not_verified("nvidia", f"rejected by policy: {exc}")
    except AttestationError as exc:
        msg = str(exc)
        if "expired" in msg or "not yet valid" in msg:
            msg += " (--at TIME verifies as of another time)"
        return not_verified("nvidia", f"not verified: {msg}")
    devices = result["devices"]
    n = len(devices) if isinstance(devices, list) else 0
    why = f"{n} device(s), certificate chain to the NVIDIA root"
    unchecked = []
    if not args.nonce:
        unchecked.append("freshness (no --nonce)")
    if not (args.rim or args.rim_service):
        unchecked.append("measurements (no --rim/--rim-service)")
    if args.policy:
        why += "; policy: checked"
    else:
        unchecked.append("policy (no --policy)")
    return verified("nvidia", result, why, unchecked=unchecked)
