"""coco-verify tdx, run in-process through the real dispatcher."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from attestation.verify_cli import main

from ._data import CCEL, Q4, Q5, QVL_TDX, QVL_TDX_COLL


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object] | None, str]:
    rc = main(["--strict", "tdx", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.split("\n", 1)[1]) if rc in (0, 3) else None), err


def test_v4_claims(capsys: pytest.CaptureFixture[str]) -> None:
    rc, c, _ = _run(capsys, str(Q4), "--at", "2026-06-01T00:00:00Z")
    assert rc == 3 and c is not None
    assert c["version"] == 4 and c["debug"] is True and c["tcb_status"] is None
    assert str(c["mr_td"]).startswith("705ee938")
    for k in ("mr_config_id", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data"):
        assert isinstance(c[k], str)


def test_v5_and_collateral(capsys: pytest.CaptureFixture[str]) -> None:
    rc, c, _ = _run(capsys, str(Q5))
    assert rc == 3 and c is not None and c["version"] == 5
    rc, c, _ = _run(capsys, str(QVL_TDX), "--collateral", str(QVL_TDX_COLL), "--at", "2025-07-01T00:00:00Z")
    assert rc == 3 and c is not None and c["tcb_status"] == "UpToDate"


def test_rejections_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "q"
    data = bytearray(Q4.read_bytes())
    data[200] ^= 1
    bad.write_bytes(bytes(data))
    rc, _, err = _run(capsys, str(bad))
    assert rc == 1 and err.count("\n") == 1 and "signature" in err
    rc, _, err = _run(capsys, str(Q4), "--expect-report-data", "00" * 64)
    assert rc == 1 and "REPORTDATA" in err
    rc, _, err = _run(capsys, str(QVL_TDX), "--collateral", str(QVL_TDX_COLL))  # collateral stale today
    assert rc == 1
    rc, _, err = _run(capsys, str(Q4), "--eventlog", str(CCEL))
    assert rc == 1 and "replay" in err
    rc, _, err = _run(capsys, str(tmp_path / "missing"))
    assert rc == 2 and "cannot read quote" in err and "no such file" in err


def test_policy_only_with_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps({"allow_debug": False}))
    rc, _, err = _run(capsys, str(Q4), "--policy", str(pol))
    assert rc == 1 and "DEBUG" in err
    pol.write_text(
        json.dumps(
            {
                "allow_debug": True,
                "mr_td": [
                    "705EE9381B8633A9FBE532B52345E8433343D2868959F57889D84CA377C395B689CAC1599CCEA1B7D420483A9CE5F031"
                ],
            }
        )
    )
    rc, c, _ = _run(capsys, str(Q4), "--policy", str(pol))
    assert rc == 3 and c is not None
    pol.write_text(json.dumps({"allow_debug": True, "accepted_tcb_statuses": ["UpToDate"]}))
    rc, _, err = _run(capsys, str(Q4), "--policy", str(pol))
    assert rc == 1 and "TCB status" in err
    pol.write_text(json.dumps({"allow_debug": True, "bogus": 1}))
    rc, _, err = _run(capsys, str(Q4), "--policy", str(pol))
    assert rc == 2 and "unknown keys 'bogus'" in err and "valid keys: " in err


def test_evidence_json_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"cc_eventlog": None, "quote": base64.b64encode(Q4.read_bytes()).decode()}))
    rc, c, _ = _run(capsys, str(ev))
    assert rc == 3 and c is not None and c["version"] == 4
    # malformed evidence JSON is a one-line rejection, not a traceback
    for text in ('{"quote": "AA==", "quote": "AA=="}', "{not json", '{"quote": NaN}'):
        ev.write_text(text)
        rc, _, err = _run(capsys, str(ev))
        assert rc != 0 and "does not parse" in err and "Traceback" not in err
