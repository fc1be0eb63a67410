"""TDX quote verification throughput: ours (pure Python on `cryptography`) vs
dcap-qvl (Rust, PyPI) on the same quote, collateral and time, in one run.

    .venv/bin/python bench/tdx_verify.py [--seconds 3]

Prints quotes verified per second for: authenticity only (no collateral),
full verification with collateral, dcap-qvl with the same collateral, the
ratio, and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import evidence, rate

from attestation.tdx.collateral import Collateral, _verify_signatures
from attestation.tdx.pck import intel_sgx_root_ca
from attestation.tdx.verify import verify_quote

TDX = evidence("tdx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    quote = (TDX / "dcap-qvl/tdx_quote").read_bytes()
    coll_text = (TDX / "dcap-qvl/tdx_quote_collateral.json").read_text()
    at = datetime(2025, 7, 1, tzinfo=UTC)
    root = intel_sgx_root_ca()
    coll = Collateral.from_json(coll_text)

    r_auth = rate(lambda: verify_quote(quote, root_ca=root, now=at), a.seconds)
    r_full = rate(lambda: verify_quote(quote, root_ca=root, now=at, collateral=coll), a.seconds)

    def cold() -> object:
        _verify_signatures.cache_clear()
        return verify_quote(quote, root_ca=root, now=at, collateral=coll)

    r_cold = rate(cold, a.seconds)
    print(f"ours, authenticity only (sig, QE binding, PCK chain): {r_auth:8.1f} quotes/s")
    print(f"ours, with collateral, collateral signatures memoized: {r_full:7.1f} quotes/s")
    print(f"ours, with collateral, nothing memoized (cold):        {r_cold:7.1f} quotes/s")
    try:
        import dcap_qvl
    except ImportError:
        print("dcap-qvl not installed: no peer figure")
    else:
        root_der = (TDX / "dcap-qvl/TrustedRootCA.der").read_bytes()
        qcoll = dcap_qvl.QuoteCollateralV3.from_json(coll_text)
        ts = int(at.timestamp())
        r_peer = rate(lambda: dcap_qvl.verify_with_root_ca(quote, qcoll, root_der, ts), a.seconds)
        print(f"dcap-qvl 0.7.0 (Rust), with the same collateral:      {r_peer:8.1f} quotes/s")
        print(
            f"ratio ours/dcap-qvl with collateral: memoized {r_full / r_peer:.2f}, cold {r_cold / r_peer:.2f}"
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS: {peak_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
