"""``coco-verify snp``: input formats, claims, exit codes, one-line reasons."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.snp.report import Product, TcbVersion
from attestation.verify_cli import main

from .synth import SynthPki, build_report, sign

REQUIRED = {
    "version",
    "measurement",
    "report_data",
    "host_data",
    "policy",
    "vmpl",
    "chip_id",
    "reported_tcb",
    "product",
    "signing_key",
    "debug",
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    rc = main(["--strict", "snp", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.split("\n", 1)[1]) if rc in (0, 3) else None), err


def test_raw_report_claims(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, c, err = _run(
        capsys, str(fx / "trustee/test-report.bin"), "--vcek", str(fx / "trustee/test-vcek.der")
    )
    assert rc == 3, err
    assert c is not None and set(c) >= REQUIRED
    assert c["version"] == 2 and c["product"] == "Milan" and c["signing_key"] == "vcek"
    assert c["debug"] is False and c["vmpl"] == 0
    assert c["report_data"] == "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32
    assert c["reported_tcb"]["raw"] == "0300000000000873" and c["reported_tcb"]["microcode"] == 115
    assert c["chip_id"] == c["chip_id"].lower() and len(c["chip_id"]) == 128
    assert c["policy"]["raw"] == "0x3001f"
    # the chain used and the time it was judged at (what the verdict line also says)
    assert c["chain"] == "VCEK -> ASK -> ARK (Milan)" and c["verified_at"].endswith("+00:00")


def test_hex_and_json_inputs(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, c, _ = _run(
        capsys, str(fx / "virtee-sev/report_milan.hex"), "--vcek", str(fx / "virtee-sev/vcek_milan.der")
    )
    assert rc == 3 and c is not None and c["report_data"].startswith("d447b55d")
    rc, c, _ = _run(capsys, str(fx / "trustee/e2e_snp_evidence_genoa.json"))
    assert rc == 3 and c is not None and c["product"] == "Genoa" and c["version"] == 3


def test_vlek_as_of(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(fx / "trustee/test-vlek-report.bin"), "--vcek", str(fx / "trustee/test-vlek.der")]
    rc, c, _ = _run(capsys, *args, "--at", "2025-06-01T00:00:00Z")
    assert rc == 3 and c is not None and c["signing_key"] == "vlek" and c["vmpl"] == 1
    rc, _, err = _run(capsys, *args)
    assert rc == 1 and "VLEK expired on 2025-12-10" in err and err.count("\n") == 1


def test_certs_dir(fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(fx / "trustee/test-vcek.der", tmp_path / "chip.der")
    rc, c, _ = _run(capsys, str(fx / "trustee/test-report.bin"), "--certs-dir", str(tmp_path))
    assert rc == 3 and c is not None
    rc, _, err = _run(capsys, str(fx / "trustee/test-report.bin"))
    assert rc == 2 and "no VCEK" in err and "pass --vcek CERT, --certs-dir DIR or --kds" in err


@pytest.mark.parametrize(
    ("mutation", "code", "reason"),
    [
        (lambda b: b[:-1], 2, "truncated"),
        (lambda b: b + b"\0", 2, "oversized"),
        (lambda b: b"\x07" + b[1:], 2, "version 7 is not supported"),
        (lambda b: b[:42] + bytes([b[42] ^ 1]) + b[43:], 1, "signature does not verify"),
        (lambda b: b[:0x180] + bytes([b[0x180] + 1]) + b[0x181:], 1, "REPORTED_TCB bootloader=4"),
    ],
)
def test_rejections_have_distinct_one_line_reasons(
    fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mutation, code: int, reason: str
) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutation((fx / "trustee/test-report.bin").read_bytes()))
    rc, _, err = _run(capsys, str(bad), "--vcek", str(fx / "trustee/test-vcek.der"))
    assert rc == code and reason in err and err.count("\n") == 1


def test_usage_errors(fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep, vcek = str(fx / "trustee/test-report.bin"), str(fx / "trustee/test-vcek.der")
    assert _run(capsys, str(tmp_path / "missing"), "--vcek", vcek)[0] == 2
    assert _run(capsys, rep, "--vcek", vcek, "--at", "yesterday")[0] == 2
    assert _run(capsys, rep, "--vcek", vcek, "--expect-report-data", "zz")[0] == 2
    rc, _, err = _run(capsys, rep, "--vcek", vcek, "--expect-report-data", "11" * 64)
    assert rc == 1 and "REPORT_DATA" in err


def test_unusable_roots_bundle(
    fx: Path, tmp_path: Path, pki_milan: SynthPki, capsys: pytest.CaptureFixture[str]
) -> None:
    """A synthetic SEV-Milan ASK beside AMD's real ARK-Milan: the ARK did not sign it."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from attestation.snp.certs import TrustStore

    ark = TrustStore.builtin().roots[Product.MILAN].ark
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(pki_milan.roots.ask.public_bytes(Encoding.PEM) + ark.public_bytes(Encoding.PEM))
    rc, _, err = _run(capsys, str(fx / "trustee/test-report.bin"), "--roots", str(mixed))
    assert rc == 2 and "unusable trust material" in err


def test_debug_report_verifies_and_policy_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = SynthPki.create(Product.MILAN)
    tcb = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115)
    key, der = pki.leaf(tcb=tcb, hwid=bytes(range(64)))
    (tmp_path / "r.bin").write_bytes(sign(build_report(tcb=tcb, policy=0x30000 | (1 << 19)), key))
    (tmp_path / "vcek.der").write_bytes(der)
    (tmp_path / "roots.pem").write_bytes(pki.roots_pem())
    (tmp_path / "policy.json").write_text("{}")
    args = [
        str(tmp_path / "r.bin"),
        "--vcek",
        str(tmp_path / "vcek.der"),
        "--roots",
        str(tmp_path / "roots.pem"),
    ]
    rc, c, err = _run(capsys, *args, "--at", "2026-06-01T00:00:00Z")
    assert rc == 3 and c is not None and c["debug"] is True and "WARNING" in err
    rc, _, err = _run(
        capsys, *args, "--at", "2026-06-01T00:00:00Z", "--policy", str(tmp_path / "policy.json")
    )
    assert rc == 1 and "DEBUG" in err
    # the same report is not trusted without the synthetic roots
    rc, _, err = _run(capsys, *args[:3], "--at", "2026-06-01T00:00:00Z")
    assert rc == 1 and "does not verify under ASK-Milan" in err


def test_console_script(fx: Path) -> None:
    exe = Path(sys.executable).parent / "coco-verify"
    assert exe.exists(), f"coco-verify console script not installed beside {sys.executable} (make deps)"
    cp = subprocess.run(
        [
            str(exe),
            "--strict",
            "snp",
            str(fx / "trustee/test-report.bin"),
            "--vcek",
            str(fx / "trustee/test-vcek.der"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert cp.returncode == 3 and json.loads(cp.stdout.split(b"\n", 1)[1])["signing_key"] == "vcek"
