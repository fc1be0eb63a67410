"""Peer measurement for bench/nvidia_verify.py: NVIDIA's own local verifier
(PyPI ``nv-local-gpu-verifier``) on the same recorded Hopper evidence.

Run with a Python that has nv-local-gpu-verifier installed (not the project
venv: it pins older cryptography/lxml and pulls pyOpenSSL, signxml, ecdsa):

    python3 -m venv /tmp/nvpeer && /tmp/nvpeer/bin/pip install nv-local-gpu-verifier
    /tmp/nvpeer/bin/python bench/nvidia_nvt_peer.py REPORT.txt CHAIN.txt NONCE_HEX SECONDS

Per iteration it does what NVIDIA's verifier does for one GPU offline: parse
the report, verify its signature (python-ecdsa), extract and compare the
FWID, verify the 5-certificate chain (pyOpenSSL X509Store), and compare the
nonce. Prints {"nvt_verifications_per_s": ...}.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from OpenSSL import crypto
from verifier.attestation import AttestationReport
from verifier.cc_admin_utils import CcAdminUtils
from verifier.config import HopperSettings


def main() -> int:
    report_path, chain_path, nonce_hex, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    logging.disable(logging.CRITICAL)
    report = bytes.fromhex(Path(report_path).read_text().strip())
    pem = Path(chain_path).read_bytes()
    blocks = [b"-----BEGIN CERTIFICATE-----" + p for p in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    settings = HopperSettings()

    def once() -> None:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
        ar = AttestationReport(report, settings)
        assert ar.verify_signature(
            chain[0].to_cryptography(), settings.signature_length, settings.HashFunction
        )
        fwid = ar.get_response_message().get_opaque_data().get_data("OPAQUE_FIELD_ID_FWID").hex()
        ok = CcAdminUtils.verify_gpu_certificate_chain(chain, settings, fwid)
        assert ok is True or (isinstance(ok, tuple) and ok[0] is True), ok
        assert ar.get_request_message().get_nonce().hex() == nonce_hex

    once()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        once()
        n += 1
    print(json.dumps({"nvt_verifications_per_s": n / elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
