"""One verdict format and exit-code scheme for every ``coco-verify`` TEE."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attestation import verify_cli
from attestation.errors import AttestationError, EvidenceFormatError
from attestation.verify_cli import (
    EXIT_NOT_VERIFIED,
    EXIT_UNCHECKED,
    EXIT_USAGE,
    EXIT_VERIFIED,
    Inputs,
    Verdict,
    add_evidence_arguments,
    main,
    run_verify,
)

from .nvidia.vectors import NONCE_931, fixture_path
from .tdx._data import Q4, QVL_TDX, QVL_TDX_COLL


def test_exit_codes_are_distinct_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert len({EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_USAGE, EXIT_UNCHECKED}) == 4
    for argv in (["--help"], ["snp", "--help"], ["tdx", "--help"], ["nvidia", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert (
            "exit status: 0 verified" in text
            and "--strict" in text
            and "authentic but NOT fully checked" in text
        )
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("coco-verify ")


def test_tdx_without_collateral_is_not_a_silent_success(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--strict", "tdx", str(Q4)])
    out, err = capsys.readouterr()
    assert rc == EXIT_UNCHECKED
    first, rest = out.split("\n", 1)
    assert first.startswith("verified: yes tdx v4 quote")
    assert "NOT checked: TCB status (no --collateral/--pccs-url), policy (no --policy)" in first
    assert json.loads(rest)["tcb_status"] is None
    assert (
        err
        == "coco-verify tdx: WARNING: NOT checked: TCB status (no --collateral/--pccs-url), policy (no --policy)\n"
    )


def test_unchecked_exits_0_without_strict_but_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # the signature-only contract scripts rely on: exit 0, with what was NOT checked said loudly
    rc = main(["tdx", str(Q4)])
    out, err = capsys.readouterr()
    assert rc == EXIT_VERIFIED
    first, rest = out.split("\n", 1)
    assert "NOT checked: TCB status (no --collateral/--pccs-url)" in first
    assert json.loads(rest)["tcb_status"] is None
    assert "WARNING: NOT checked: TCB status" in err


def test_tdx_fully_checked_is_exit_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps({"allow_debug": True, "accepted_tcb_statuses": ["UpToDate"]}))
    rc = main(["--strict", "tdx", str(QVL_TDX), "--collateral", str(QVL_TDX_COLL), "--at", "2025-07-01T00:00:00Z",
               "--policy", str(pol)])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == EXIT_VERIFIED, err
    assert (
        out.splitlines()[0].startswith("verified: yes tdx") and "TCB status UpToDate; policy: checked" in out
    )
    assert "NOT checked" not in out + err


def test_tdx_rejections_and_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    snp_report = tmp_path / "snp.bin"
    snp_report.write_bytes(b"\x02\x00\x00\x00" + b"\x01" * 1180)
    rc = main(["--strict", "tdx", str(snp_report)])
    err = capsys.readouterr().err
    assert rc in (EXIT_NOT_VERIFIED, EXIT_USAGE) and "not a TDX quote" in err and "Traceback" not in err
    rc = main(["--strict", "tdx", str(Q4), "--at", "yesterday"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "--at 'yesterday' is not an ISO 8601" in err and "rejected" not in err
    pcs = tmp_path / "tcb.json"
    pcs.write_text(json.dumps({"tcbInfo": {}, "signature": "00"}))
    rc = main(["--strict", "tdx", str(Q4), "--collateral", str(pcs)])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "PCS tcbInfo" in err and "QuoteCollateralV3" in err


def test_snp_policy_key_typo_lists_valid_keys() -> None:
    from attestation.errors import EvidenceFormatError
    from attestation.snp.policy import SnpPolicy

    with pytest.raises(EvidenceFormatError) as ei:
        SnpPolicy.from_json('{"debug": false}')
    msg = str(ei.value)
    assert "unknown key 'debug'" in msg and "valid keys: " in msg and "allow_debug" in msg


def test_closed_pipe_is_quiet() -> None:
    args = [sys.executable, "-c", "import sys; from attestation.verify_cli import main; sys.exit(main())",
            "nvidia", str(fixture_path("nvtrust/hopperAttestationReport.txt")), "--cert-chain",
            str(fixture_path("nvtrust/hopperCertChain.txt")), "--nonce", NONCE_931.hex()]  # fmt: skip
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write, as with `| head` that exited
    try:
        cp = subprocess.run(args, stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = cp.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert cp.returncode == 141


def test_stale_collateral_and_report_data_mismatch_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["--strict", "tdx", str(QVL_TDX), "--collateral", str(QVL_TDX_COLL), "--at", "2030-01-01T00:00:00Z"]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_NOT_VERIFIED and "not current at 2030-01-01" in err
    assert "(valid 20" in err and "--at TIME" in err
    rc = main(["--strict", "tdx", str(Q4), "--expect-report-data", "00" * 64])
    assert rc == EXIT_NOT_VERIFIED and "REPORTDATA" in capsys.readouterr().err


def _verify_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evidence_arguments(parser, evidence_help="e", report_data_help="r")
    (tmp_path / "ev").write_bytes(b"evidence")
    return parser.parse_args([str(tmp_path / "ev"), *extra])


def test_run_verify_maps_each_phase_to_its_exit_status(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plumbing the azure/tpm/cca/csv/sgx subcommands share: a failure while
    loading is a usage error, a format error while checking too, any other
    attestation error a rejection; without --expect-report-data the nonce is
    named as NOT checked, before the TEE's own unchecked items."""

    def load(_: argparse.Namespace, inputs: Inputs) -> bytes:
        return inputs.evidence.upper()

    def check(_: argparse.Namespace, inputs: Inputs, loaded: bytes) -> Verdict:
        assert inputs.init_data is None  # no --init-data-digest configured: None, not absent
        return Verdict({"e": loaded.decode()}, "fine", ["TCB status"])

    monkeypatch.setattr(verify_cli, "_strict", False)  # an earlier main(["--strict", ...]) set it

    rc = run_verify(_verify_args(tmp_path), "t", limit=64, load=load, check=check)
    out, _ = capsys.readouterr()
    assert rc == EXIT_VERIFIED
    assert (
        out.splitlines()[0]
        == "verified: yes t fine; NOT checked: nonce (no --expect-report-data), TCB status"
    )
    assert json.loads(out.split("\n", 1)[1]) == {"e": "EVIDENCE"}

    def bad_value(_: argparse.Namespace, __: Inputs) -> bytes:
        raise ValueError("bad PEM")

    def rejected(_: argparse.Namespace, __: Inputs, ___: bytes) -> Verdict:
        raise AttestationError("signature")

    def malformed(_: argparse.Namespace, __: Inputs, ___: bytes) -> Verdict:
        raise EvidenceFormatError("truncated")

    args = _verify_args(tmp_path, "--expect-report-data", "00")
    assert run_verify(args, "t", limit=64, load=bad_value, check=check) == EXIT_USAGE
    assert capsys.readouterr().err == "coco-verify t: malformed input: bad PEM\n"
    assert run_verify(args, "t", limit=64, load=load, check=rejected) == EXIT_NOT_VERIFIED
    assert capsys.readouterr().out == "verified: no t rejected: signature\n"
    assert run_verify(args, "t", limit=64, load=load, check=malformed) == EXIT_USAGE
    assert capsys.readouterr().err == "coco-verify t: malformed input: truncated\n"
    assert run_verify(args, "t", limit=4, load=load, check=check) == EXIT_USAGE
    assert capsys.readouterr().err == "coco-verify t: malformed input: ev is larger than 4 bytes\n"
    (tmp_path / "ev").unlink()
    assert run_verify(args, "t", limit=64, load=load, check=check) == EXIT_USAGE
    assert "cannot read input: No such file or directory" in capsys.readouterr().err
