"""attestation-agent as a real process: socket, flags, signals, start-up failures."""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from attestation.aa import cli
from attestation.errors import VerificationError
from attestation.sample import SampleAttester
from coco_rpc.protos import attestation_agent_pb2 as pb
from tests.support.aa import aa_executable, launch_aa, start_aa, wait_for_socket

INITDATA = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = "x"\n'


def test_serves_ttrpc_and_stops_on_sigterm(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with start_aa(tmp_path) as aa:
        started = time.monotonic() - t0
        code, _, out = aa.call("GetTeeType")
        assert code == 0 and pb.GetTeeTypeResponse.FromString(out).tee == "sample"
        code, _, out = aa.call(
            "GetEvidence", pb.GetEvidenceRequest(RuntimeData=b"\x01" * 32).SerializeToString()
        )
        assert code == 0 and b"report_data" in pb.GetEvidenceResponse.FromString(out).Evidence
        code, msg, _ = aa.call("BindInitData", pb.BindInitDataRequest(Digest=b"1").SerializeToString())
        assert code == 5 and "is not supported" in msg
        assert aa.stop(signal.SIGTERM) == 0
        assert not aa.socket_path.exists()
    assert started < 10, f"socket took {started:.1f}s"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_signals_shut_down_cleanly(tmp_path: Path, sig: int) -> None:
    with start_aa(tmp_path) as aa:
        assert aa.stop(sig) == 0
        assert not aa.socket_path.exists()


def test_replaces_stale_socket_and_creates_parent_dir(tmp_path: Path) -> None:
    nested = tmp_path / "r"
    nested.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(nested / "aa.sock"))
    stale.close()  # leaves a dead socket file behind
    aa = launch_aa(nested)
    try:
        for _ in range(200):
            try:
                assert aa.call("GetTeeType")[0] == 0
                break
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(0.05)
        else:
            raise AssertionError(f"AA never answered on the reclaimed socket:\n{aa.log()}")
    finally:
        assert aa.stop() == 0
    deeper = tmp_path / "new" / "dir"
    proc = subprocess.Popen([aa_executable(), "-a", f"unix://{deeper}/aa.sock"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if (deeper / "aa.sock").exists():
                break
            time.sleep(0.05)
        assert (deeper / "aa.sock").exists()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_grpc_address(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([aa_executable(), "-a", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    try:
        import grpc

        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(ch).result(timeout=15)
        call = ch.unary_unary(
            "/attestation_agent.AttestationAgentService/GetTeeType",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.GetTeeTypeResponse.FromString,
        )
        assert call(pb.GetTeeTypeRequest(), timeout=10).tee == "sample"
        ch.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize(
    ("files", "args", "needle"),
    [
        ({"aa.toml": "[token_configs.kbs]\nurl = 5\n"}, ["-c", "{d}/aa.toml"], "token_configs.kbs.url"),
        ({}, ["-c", "{d}/missing.toml"], "cannot read"),
        (
            {"i.toml": 'version = "2.0.0"\nalgorithm = "sha384"\n'},
            ["-t", "{d}/i.toml"],
            "unsupported version",
        ),
        ({}, ["-i", "***"], "initdata-digest"),
        ({}, ["-a", "nonsense"], "not a socket address"),
    ],
)
def test_start_failures_exit_nonzero(
    tmp_path: Path, files: dict[str, str], args: list[str], needle: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = [a.format(d=tmp_path) for a in args]
    if "-a" not in argv:
        argv = ["-a", f"unix://{tmp_path}/aa.sock", *argv]
    cp = subprocess.run([aa_executable(), *argv], capture_output=True, timeout=30)
    assert cp.returncode == 1
    assert needle in cp.stderr.decode()
    assert not (tmp_path / "aa.sock").exists()


def test_initdata_on_sample_is_unsupported_but_starts(tmp_path: Path) -> None:
    (tmp_path / "i.toml").write_bytes(INITDATA)
    with start_aa(tmp_path, args=["-t", str(tmp_path / "i.toml")]) as aa:
        assert aa.call("GetTeeType")[0] == 0
    assert "not supported" in aa.log()
    digest = base64.b64encode(hashlib.sha384(INITDATA).digest()).decode()
    with start_aa(tmp_path / "2", args=["-i", digest]) as aa2:
        assert aa2.call("GetTeeType")[0] == 0


class _Platform(SampleAttester):
    """Stands in for TEE hardware (which cannot exist here): compares the
    bound digest against a fixed init-data field like SNP HOSTDATA."""

    tee = "snp"

    def __init__(self, field: bytes) -> None:
        self.field = field
        self.bound: list[bytes] = []

    async def bind_init_data(self, digest: bytes) -> None:
        self.bound.append(digest)
        if digest[:32].ljust(32, b"\0") != self.field:
            raise VerificationError("HOSTDATA does not match the initdata digest")


def test_initdata_mismatch_aborts_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "i.toml").write_bytes(INITDATA)
    plat = _Platform(b"\xaa" * 32)
    monkeypatch.setattr(cli, "detect_primary", lambda p: plat)
    rc = cli.run(["-a", f"unix://{tmp_path}/aa.sock", "-t", str(tmp_path / "i.toml")])
    assert rc == 1
    assert plat.bound == [hashlib.sha384(INITDATA).digest()]
    assert not (tmp_path / "aa.sock").exists()


def test_initdata_match_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "i.toml").write_bytes(INITDATA)
    plat = _Platform(hashlib.sha384(INITDATA).digest()[:32])
    monkeypatch.setattr(cli, "detect_primary", lambda p: plat)
    seen: dict[str, Any] = {}

    async def fake_serve(address: str, services: Any, **kw: Any) -> None:
        seen["address"] = address
        seen["service"] = services[0].name

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert cli.run(["-a", f"unix://{tmp_path}/aa.sock", "-t", str(tmp_path / "i.toml")]) == 0
    assert seen == {
        "address": f"unix://{tmp_path}/aa.sock",
        "service": "attestation_agent.AttestationAgentService",
    }


def test_kbc_params_env_fallback(tmp_path: Path) -> None:
    aa = launch_aa(tmp_path, env={"AA_KBC_PARAMS": "cc_kbc::http://127.0.0.1:9"})
    try:
        wait_for_socket(aa)
        code, msg, _ = aa.call(
            "GetToken", pb.GetTokenRequest(TokenType="kbs").SerializeToString(), timeout=60
        )
        # the KBS from the env is used (and is unreachable): a handshake error, not "no KBS configured"
        assert code == 13 and "127.0.0.1:9" in msg, msg
    finally:
        aa.stop()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ("cc_kbc", "kbs token config not configured in config file"),
        ("cc_kbc::http://a::b", "kbs token config not configured in config file"),
        ("cc_kbc::", "is not an http(s) URL"),
        ("cc_kbc::kbs.example:8080", "is not an http(s) URL"),
    ],
)
def test_unusable_kbc_params_start_and_fail_at_first_use(tmp_path: Path, params: str, needle: str) -> None:
    """As upstream: a malformed or unusable agent.aa_kbc_params does not stop the AA."""
    aa = launch_aa(tmp_path, env={"AA_KBC_PARAMS": params})
    try:
        wait_for_socket(aa)
        assert aa.call("GetTeeType")[0] == 0
        code, msg, _ = aa.call("GetToken", pb.GetTokenRequest(TokenType="kbs").SerializeToString())
        assert code == 13 and needle in msg, msg
    finally:
        aa.stop()


def test_log_level_and_unknown_keys(tmp_path: Path) -> None:
    cfg = '[token_configs.kbs]\nurl = "http://x:1"\nsurprise = true\n[log]\nlevel = "warn"\n'
    with start_aa(tmp_path, config_toml=cfg, env={"RUST_LOG": "debug"}) as aa:
        aa.call("GetTeeType")
    text = aa.log()
    assert "token_configs.kbs.surprise" in text
    assert "DEBUG" in text  # RUST_LOG wins over [log].level


def test_helper_copes_with_long_work_dirs(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    with start_aa(deep) as aa:
        assert len(str(aa.socket_path)) < 108
        assert aa.call("GetTeeType")[0] == 0
