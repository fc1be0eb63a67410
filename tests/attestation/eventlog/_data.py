"""Paths of the TDX event-log vectors (see tests/fixtures/evidence/tdx/MANIFEST.md)."""

from __future__ import annotations

from tests.support.vectors import evidence

TDX = evidence("tdx")
EL = TDX / "trustee-eventlog"
