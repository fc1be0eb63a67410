#!/usr/bin/env python3
"""Check NVIDIA GPU attestation on a machine with a real GPU; print a JSON summary.

    .venv/bin/python scripts/nvidia_device_check.py [--set-ready] [--timeout 60]

What it does, each step recorded in the summary:

1. ``nvidia-smi`` queries (GPU name, UUID, driver, VBIOS; ``conf-compute``
   CC feature / ready state) when nvidia-smi exists;
2. NVML through our backend: device count, system CC state, per-GPU
   architecture and UUID, GPUs ready state;
3. our attester (``NvidiaAttester.detect``) collects evidence for a fresh
   random nonce, and our verifier checks it with NVIDIA's packaged roots at the
   current time (signature, chain, FWID, nonce). No RIMs (no network).
4. only with ``--set-ready``: sets the GPUs' ready state after a successful
   verification (this changes device state; off by default).

Status: "no device" (no NVML or no GPU: exit 0), "cc off" (GPUs without CC:
exit 0, with the reason), "ok" (evidence verified: exit 0), "error" (exit 1).
Runs cleanly on machines without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attestation.errors import AttestationError, UnsupportedPlatform
from attestation.nvidia.attester import NvidiaAttester, ReadyState
from attestation.nvidia.device import ARCH_NAMES, PynvmlBackend
from attestation.nvidia.errors import CcModeDisabled
from attestation.nvidia.kbs import NvidiaVerifier


def smi(args: list[str], timeout: float) -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False}
    try:
        cp = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"available": True, "error": f"timed out after {timeout}s"}
    return {
        "available": True,
        "rc": cp.returncode,
        "out": cp.stdout.strip()[:4000],
        "err": cp.stderr.strip()[:1000],
    }


def nvml_facts() -> dict[str, Any]:
    be = PynvmlBackend()
    try:
        be.init()
    except UnsupportedPlatform as exc:
        return {"available": False, "reason": str(exc)}
    facts: dict[str, Any] = {"available": True}
    try:
        facts["driver_version"] = be.driver_version()
        n = be.device_count()
        facts["device_count"] = n
        st = be.cc_state()
        facts["cc_state"] = {
            "environment": st.environment,
            "cc_feature": st.cc_feature,
            "dev_tools_mode": st.dev_tools_mode,
        }
        facts["gpus"] = [
            {
                "index": i,
                "arch": ARCH_NAMES.get(be.device_arch(i), be.device_arch(i)),
                "uuid": be.device_uuid(i),
            }
            for i in range(n)
        ]
        try:
            facts["ready_state"] = be.gpus_ready_state()
        except AttestationError as exc:
            facts["ready_state_error"] = str(exc)
    except AttestationError as exc:
        facts["error"] = str(exc)
    finally:
        be.shutdown()
    return facts


async def attest(set_ready: bool) -> dict[str, Any]:
    try:
        att = NvidiaAttester.detect(ready_state=ReadyState.NEVER)
    except CcModeDisabled as exc:
        return {"status": "cc off", "reason": str(exc)}
    if att is None:
        return {"status": "no device"}
    try:
        report_data = os.urandom(48)
        t0 = time.perf_counter()
        evidence = await att.get_evidence(report_data)
        collect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        claims = NvidiaVerifier().verify(
            evidence, expected_report_data=report_data, expected_init_data_hash=None, now=datetime.now(UTC)
        )
        verify_s = time.perf_counter() - t0
        out: dict[str, Any] = {
            "status": "ok",
            "nonce": report_data[:32].hex(),
            "collect_s": round(collect_s, 3),
            "verify_s": round(verify_s, 3),
            "evidence_bytes": len(json.dumps(evidence)),
            "devices": [
                {
                    k: d[k]
                    for k in (
                        "arch",
                        "uuid",
                        "driver_version",
                        "vbios_version",
                        "fwid_checked",
                        "nonce_checked",
                        "feature_flag",
                    )
                }
                for d in claims["devices"]
            ],
        }
        if set_ready:
            att.set_ready(True)
            out["ready_state_set"] = True
        return out
    except AttestationError as exc:
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        att.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set-ready", action="store_true", help="set the GPUs ready state after verification")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per nvidia-smi call")
    args = ap.parse_args()
    summary: dict[str, Any] = {"host": os.uname().nodename, "time": datetime.now(UTC).isoformat()}
    summary["nvidia_smi"] = {
        "query": smi(
            ["--query-gpu=name,uuid,driver_version,vbios_version", "--format=csv,noheader"], args.timeout
        ),
        "conf_compute_feature": smi(["conf-compute", "-f"], args.timeout),
        "conf_compute_ready_state": smi(["conf-compute", "-grs"], args.timeout),
    }
    summary["nvml"] = nvml_facts()
    summary["attestation"] = asyncio.run(attest(args.set_ready))
    summary["status"] = summary["attestation"]["status"]
    print(json.dumps(summary, indent=2))
    return 1 if summary["status"] == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
