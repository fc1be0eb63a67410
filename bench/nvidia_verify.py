"""NVIDIA evidence verification throughput.

    .venv/bin/python bench/nvidia_verify.py [--seconds 2] [--peer-python /tmp/nvpeer/bin/python]

Measures verifications per second of recorded Hopper evidence (report
signature, 5-certificate chain, FWID, nonce), of a driver-535 report with its
VBIOS RIM (+ XML-DSig, RIM chain, 12 measurements), and two peers measured in
the same run:

* the bare cryptography a verifier cannot avoid (the same ECDSA P-384
  verifications done directly with ``cryptography``), always;
* NVIDIA's own verifier (nv-local-gpu-verifier) on the same report, when
  ``--peer-python`` names a Python that has it (see bench/nvidia_nvt_peer.py).

Prints JSON with the ratios and the peak RSS. Fixtures come from
tests/fixtures/evidence/nvidia (see tests/support/vectors.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from _common import evidence, rate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from attestation.nvidia.certs import load_pem_chain
from attestation.nvidia.endorsements import RimFiles
from attestation.nvidia.evidence import DeviceEvidence
from attestation.nvidia.rim import _c14n, _parse
from attestation.nvidia.spdm import AttestationReport
from attestation.nvidia.verify import TrustAnchors, verify_device

ROOT = Path(__file__).resolve().parents[1]
NV = evidence("nvidia")


def ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--peer-python", help="a Python with nv-local-gpu-verifier installed")
    args = ap.parse_args()
    if not NV.exists():
        print(f"fixtures not found at {NV}", file=sys.stderr)
        return 2
    anchors = TrustAnchors.nvidia()
    fw_report_path = NV / "nvtrust/hopperAttestationReport.txt"
    fw_chain_path = NV / "nvtrust/hopperCertChain.txt"
    fw_nonce = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    fw_dev = DeviceEvidence(
        "HOPPER", None, bytes.fromhex(fw_report_path.read_text().strip()), fw_chain_path.read_bytes()
    )
    report = bytes.fromhex((NV / "attestation-sdk/gpu_hopperAttestationReport.txt").read_text().strip())
    chain_pem = (NV / "attestation-sdk/gpu_hopperCertChain.txt").read_bytes()
    rim_doc = (NV / "nvtrust/1010_0200_882_96005E0001_PROD.swidtag").read_bytes()
    nonce = bytes.fromhex("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66")
    at = datetime(2024, 6, 1, tzinfo=UTC)
    dev = DeviceEvidence("HOPPER", None, report, chain_pem)
    rims = RimFiles((rim_doc,))

    def ours() -> object:
        return verify_device(fw_dev, expected_nonce=bytes.fromhex(fw_nonce), anchors=anchors, now=at)

    def ours_rim() -> object:
        return verify_device(dev, expected_nonce=nonce, anchors=anchors, now=at, rims=rims)

    parsed = AttestationReport.from_bytes(fw_dev.report)
    chain = load_pem_chain(fw_dev.cert_chain_pem)
    sig = parsed.response.signature
    der_sig = utils.encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    links = [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]

    def peer() -> None:
        ec_key(chain[0]).verify(der_sig, parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
        for c, issuer in links:
            c.verify_directly_issued_by(issuer)

    rim_tree = _parse(rim_doc)
    rim_certs = [
        x509.load_der_x509_certificate(base64.b64decode(m))
        for m in re.findall(rb"<ds:X509Certificate>([^<]+)<", rim_doc)
    ]
    si = rim_tree.find(
        "{http://www.w3.org/2000/09/xmldsig#}Signature/{http://www.w3.org/2000/09/xmldsig#}SignedInfo"
    )
    sv_text = rim_tree.findtext(
        "{http://www.w3.org/2000/09/xmldsig#}Signature/{http://www.w3.org/2000/09/xmldsig#}SignatureValue"
    )
    assert si is not None and sv_text is not None
    sv = base64.b64decode(sv_text)
    si_c14n = _c14n(si)
    rim_sig = utils.encode_dss_signature(int.from_bytes(sv[:48], "big"), int.from_bytes(sv[48:], "big"))
    rim_links = [(rim_certs[i], rim_certs[i + 1]) for i in range(len(rim_certs) - 1)]

    rim_parsed = AttestationReport.from_bytes(report)
    rim_dev_chain = load_pem_chain(chain_pem)
    rsig = rim_parsed.response.signature
    rim_dev_sig = utils.encode_dss_signature(
        int.from_bytes(rsig[:48], "big"), int.from_bytes(rsig[48:], "big")
    )
    rim_dev_links = [(rim_dev_chain[i], rim_dev_chain[i + 1]) for i in range(len(rim_dev_chain) - 1)]

    def peer_rim() -> None:
        ec_key(rim_dev_chain[0]).verify(rim_dev_sig, rim_parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
        for c, issuer in rim_dev_links:
            c.verify_directly_issued_by(issuer)
        ec_key(rim_certs[0]).verify(rim_sig, si_c14n, ec.ECDSA(hashes.SHA384()))
        for c, issuer in rim_links:
            c.verify_directly_issued_by(issuer)

    r_ours, r_peer = rate(ours, args.seconds), rate(peer, args.seconds)
    r_ours_rim, r_peer_rim = rate(ours_rim, args.seconds), rate(peer_rim, args.seconds)
    out = {
        "bench": "nvidia_verify",
        "device_verifications_per_s": round(r_ours, 1),
        "peer_bare_ecdsa_per_s": round(r_peer, 1),
        "ratio_vs_bare_crypto": round(r_ours / r_peer, 3),
        "device_with_rim_per_s": round(r_ours_rim, 1),
        "peer_bare_ecdsa_with_rim_per_s": round(r_peer_rim, 1),
        "ratio_with_rim_vs_bare_crypto": round(r_ours_rim / r_peer_rim, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.peer_python:
        cp = subprocess.run(
            [args.peer_python, str(Path(__file__).with_name("nvidia_nvt_peer.py")), str(fw_report_path),
             str(fw_chain_path), fw_nonce, str(args.seconds)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if cp.returncode == 0:
            nvt = json.loads(cp.stdout.strip().splitlines()[-1])["nvt_verifications_per_s"]
            out["peer_nvt_local_gpu_verifier_per_s"] = round(nvt, 1)
            out["ratio_vs_nvt_local_gpu_verifier"] = round(r_ours / nvt, 2)
        else:
            out["peer_nvt_error"] = cp.stderr.strip()[-300:]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
