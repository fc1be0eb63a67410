"""``coco-verify az-snp-vtpm|az-tdx-vtpm|tpm`` on the recorded vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from attestation.verify_cli import main

from ._data import FIXTURES, SNP, SNP_V2_RD, TDX, load


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["--strict", *argv])
    out, err = capsys.readouterr()
    if out.startswith("verified: yes "):  # the verdict line, then the claims
        out = out.split("\n", 1)[1]
    return rc, out, err


def test_az_snp_positive_and_nonce(capsys: pytest.CaptureFixture[str]) -> None:
    ev = str(SNP / "evidence-v2.json")
    rc, out, _ = _run(
        capsys, "az-snp-vtpm", ev, "--at", "2025-06-01", "--expect-report-data", SNP_V2_RD.hex()
    )
    assert rc == 0 and json.loads(out)["report_data"] == SNP_V2_RD.hex()
    rc, _, err = _run(capsys, "az-snp-vtpm", ev, "--at", "2025-06-01", "--expect-report-data", "00")
    assert rc == 1 and "nonce" in err
    rc, out, err = _run(capsys, "az-snp-vtpm", ev, "--at", "2025-06-01")
    assert rc == 3 and "nonce not checked" in err and "NOT checked: nonce (no --expect-report-data)" in err
    # before the VCEK was issued
    rc, _, err = _run(capsys, "az-snp-vtpm", ev, "--at", "2015-01-01")
    assert rc == 1 and "rejected" in err
    rc, _, err = _run(capsys, "az-snp-vtpm", ev, "--at", "2025-06-01", "--init-data-digest", "11" * 32)
    assert rc == 1 and "PCR 8" in err


def test_az_snp_byte_flip_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = load(SNP / "evidence-v1.json")
    hcl = bytearray(base64.urlsafe_b64decode(doc["hcl_report"]))
    hcl[32 + 0x90] ^= 1  # MEASUREMENT
    doc["hcl_report"] = base64.urlsafe_b64encode(bytes(hcl)).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    rc, _, err = _run(capsys, "az-snp-vtpm", str(bad), "--at", "2025-06-01")
    assert rc == 1 and "signature" in err
    bad.write_text("{")
    assert _run(capsys, "az-snp-vtpm", str(bad))[0] == 2
    assert _run(capsys, "az-snp-vtpm", str(tmp_path / "missing.json"))[0] == 2


def test_az_tdx(capsys: pytest.CaptureFixture[str]) -> None:
    ev = str(TDX / "evidence-v1.json")
    rc, out, _ = _run(
        capsys, "az-tdx-vtpm", ev, "--at", "2025-06-01", "--expect-report-data", b"challenge".hex()
    )
    claims = json.loads(out)
    assert rc == 3 and claims["tcb_status"] is None and claims["tpm"]["pcr08"] == claims["init_data"]
    rc, _, err = _run(capsys, "az-tdx-vtpm", str(SNP / "evidence-v1.json"), "--at", "2025-06-01")
    assert rc == 2 and "malformed" in err
    # SNP evidence is not TDX evidence; a --root-ca for SNP is a usage error
    rc, _, _ = _run(capsys, "az-snp-vtpm", ev, "--at", "2025-06-01")
    assert rc == 2


def test_tpm(capsys: pytest.CaptureFixture[str]) -> None:
    ev = FIXTURES / "tpm" / "tpm_evidence.json"
    rc, out, _ = _run(capsys, "tpm", str(ev))
    assert rc == 3 and json.loads(out)["ak_trust"] == "policy"
    rc, _, err = _run(capsys, "tpm", str(ev), "--expect-report-data", "00" * 48)
    assert rc == 1 and "nonce" in err
