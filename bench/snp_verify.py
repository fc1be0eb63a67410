"""SEV-SNP report verification throughput, side by side with the bare
cryptographic floor measured in the same run.

    .venv/bin/python bench/snp_verify.py [--seconds 3]

Rows (trustee's v2 Milan report + its VCEK, built-in AMD roots):

* floor: one ECDSA P-384/SHA-384 verification of the 672 signed bytes with
  `cryptography` (no parsing, no chain) — the unavoidable cost; no SNP
  verifier runs on this machine besides ours, so this is the peer;
* ours, raw report, chain cached: parse + verify_report (chain signatures
  memoized in the TrustStore, validity/TCB/hwID checked every time);
* ours, trustee evidence JSON, chain cached: SnpVerifier.verify (strict JSON
  parse, serde rebuild, VCEK parse from cert_chain, binding checks);
* ours, cold chain: a fresh TrustStore each time (ARK, ASK, VCEK RSA-PSS
  signatures re-verified).

Ends with the ratio cached/floor and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import evidence, rate
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.snp.certs import EndorsementCert, TrustStore
from attestation.snp.evidence import CertTableEntry, SnpEvidence
from attestation.snp.kbs import SnpVerifier
from attestation.snp.report import AttestationReport
from attestation.snp.verify import verify_report

SNP = evidence("snp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    raw = (SNP / "trustee/test-report.bin").read_bytes()
    vcek_der = (SNP / "trustee/test-vcek.der").read_bytes()
    now = datetime.now(UTC)
    trust = TrustStore.builtin()
    vcek = EndorsementCert.from_bytes(vcek_der)
    report = AttestationReport.from_bytes(raw)
    evidence = SnpEvidence(report, (CertTableEntry.of("VCEK", vcek_der),)).to_json()
    verifier = SnpVerifier(trust=trust)
    sig = encode_dss_signature(report.signature.r, report.signature.s)

    def floor() -> None:
        vcek.public_key.verify(sig, raw[:0x2A0], ec.ECDSA(hashes.SHA384()))

    def cached_raw() -> object:
        return verify_report(AttestationReport.from_bytes(raw), vcek, trust=trust, now=now)

    def cached_json() -> object:
        return verifier.verify(
            evidence, expected_report_data=report.report_data, expected_init_data_hash=None, now=now
        )

    def cold() -> object:
        return verify_report(AttestationReport.from_bytes(raw), vcek, trust=TrustStore(trust.roots), now=now)

    r_floor = rate(floor, a.seconds)
    r_raw = rate(cached_raw, a.seconds)
    r_json = rate(cached_json, a.seconds)
    r_cold = rate(cold, a.seconds)
    print(f"floor: bare ECDSA P-384 verify (cryptography):   {r_floor:9.1f} /s")
    print(f"ours, raw report, chain cached:                 {r_raw:9.1f} reports/s")
    print(f"ours, trustee evidence JSON, chain cached:      {r_json:9.1f} reports/s")
    print(f"ours, cold chain (3 RSA-PSS + ECDSA each time): {r_cold:9.1f} reports/s")
    print(f"ratio ours(raw, cached) / floor: {r_raw / r_floor:.2f}")
    print(f"ratio ours(JSON, cached) / floor: {r_json / r_floor:.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
