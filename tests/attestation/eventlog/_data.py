from __future__ import annotations

from pathlib import Path

TDX = Path("/work/shared/fixtures/evidence/tdx")
_p = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "evidence" / "tdx"
if _p.is_dir():
    TDX = _p
EL = TDX / "trustee-eventlog"
