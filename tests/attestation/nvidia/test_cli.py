"""coco-verify nvidia, run in-process through the real dispatcher."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from attestation.verify_cli import main

from .vectors import NONCE_27A, NONCE_931, fixture_path, read, report_bytes

HOPPER = "nvtrust/hopperAttestationReport.txt"
HOPPER_CHAIN = "nvtrust/hopperCertChain.txt"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    rc = main(["--strict", "nvidia", *args])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.split("\n", 1)[1]) if rc in (0, 3) else None), err


def test_hex_report(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(
        capsys,
        str(fixture_path(HOPPER)),
        "--cert-chain",
        str(fixture_path(HOPPER_CHAIN)),
        "--nonce",
        NONCE_931.hex(),
    )
    assert rc == 3
    (d,) = out["devices"]
    assert d["arch"] == "HOPPER" and d["driver_version"] == "550.90.07" and d["measurements_match"] is None


def test_raw_report_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raw = tmp_path / "report.bin"
    raw.write_bytes(report_bytes(HOPPER))
    rc, out, _ = run(capsys, str(raw), "--cert-chain", str(fixture_path(HOPPER_CHAIN)))
    assert rc == 3 and out["devices"][0]["nonce_checked"] is False


def test_guest_components_evidence_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ev = {
        "device_evidence_list": [
            {
                "arch": "HOPPER",
                "uuid": "GPU-x",
                "evidence": base64.b64encode(report_bytes(HOPPER)).decode(),
                "certificate": base64.b64encode(read(HOPPER_CHAIN)).decode(),
            }
        ]
    }
    p = tmp_path / "ev.json"
    p.write_text(json.dumps(ev))
    rc, out, _ = run(capsys, str(p), "--nonce", NONCE_931.hex())
    assert rc == 3 and out["devices"][0]["uuid"] == "GPU-x"


def test_sdk_list_with_switches(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, str(fixture_path("nvtrust/ppcie_switch_evidence.json")))
    assert rc == 3 and [d["arch"] for d in out["devices"]] == ["LS10"] * 4


def test_rim_and_time(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        str(fixture_path("attestation-sdk/gpu_hopperAttestationReport.txt")),
        "--cert-chain",
        str(fixture_path("attestation-sdk/gpu_hopperCertChain.txt")),
        "--nonce",
        NONCE_27A.hex(),
        "--rim",
        str(fixture_path("nvtrust/1010_0200_882_96005E0001_PROD.swidtag")),
    ]
    rc, out, _ = run(capsys, *args, "--at", "2024-06-01T00:00:00Z")
    assert rc == 3 and out["devices"][0]["measurements_match"] is True
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "expired" in err and len(err.strip().splitlines()) == 1


def test_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text('{"require_measurements_match": true}')
    rc, _, err = run(
        capsys,
        str(fixture_path(HOPPER)),
        "--cert-chain",
        str(fixture_path(HOPPER_CHAIN)),
        "--policy",
        str(pol),
    )
    assert rc == 1 and "policy" in err
    pol.write_text('{"allowed_arch": ["hopper"]}')
    rc, _, _ = run(
        capsys,
        str(fixture_path(HOPPER)),
        "--cert-chain",
        str(fixture_path(HOPPER_CHAIN)),
        "--policy",
        str(pol),
    )
    assert rc == 3


@pytest.mark.parametrize(
    ("args", "rc", "needle"),
    [
        (["--nonce", "00" * 32], 1, "nonce"),
        (["--nonce", "zz"], 2, "hex"),
        (["--nonce", "00"], 2, "32 bytes"),
        (["--at", "yesterday"], 2, "ISO 8601"),
    ],
)
def test_rejections(capsys: pytest.CaptureFixture[str], args: list[str], rc: int, needle: str) -> None:
    got, _, err = run(
        capsys, str(fixture_path(HOPPER)), "--cert-chain", str(fixture_path(HOPPER_CHAIN)), *args
    )
    assert got == rc and needle in err


def test_missing_chain_and_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, str(fixture_path(HOPPER)))
    assert rc == 2 and "--cert-chain" in err
    rc, _, err = run(capsys, str(tmp_path / "nope"), "--cert-chain", str(fixture_path(HOPPER_CHAIN)))
    assert rc == 2 and "cannot read" in err


def test_truncated_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "short.txt"
    p.write_text(report_bytes(HOPPER)[:2000].hex())
    rc, _, err = run(capsys, str(p), "--cert-chain", str(fixture_path(HOPPER_CHAIN)))
    assert rc == 2 and "truncated" in err
