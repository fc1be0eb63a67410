"""Paths of the recorded Azure vTPM vectors (tests/fixtures/evidence/az-*-vtpm)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "evidence"
SNP = FIXTURES / "az-snp-vtpm"
TDX = FIXTURES / "az-tdx-vtpm"

#: inside every VCEK's and PCK chain's validity
AT = datetime(2025, 6, 1, tzinfo=UTC)
#: report data trustee's tests use for evidence-v2.json and evidence-genoa.json
SNP_V2_RD = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
)
SNP_V2_PCR0 = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
SNP_GENOA_RD = bytes.fromhex(
    "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"
)


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())
