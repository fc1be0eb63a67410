"""Operations of the real ``kbs`` process: startup checks, -c, TLS profiles,
graceful shutdown, structured logs."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.kbs.test_peer import tls_material
from tests.support.kbs import _kbs_cmd, free_port, start_kbs


def test_starts_secure_without_token_config(tmp_path: Path) -> None:
    # no [attestation_token] at all: the KBS still starts, trusting only its own attestation
    # service's key (trustee refuses to start here unless insecure_header_jwk = true)
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http_server]\nsockets = ["127.0.0.1:{port}"]\ninsecure_http = true\n'
                   '[admin]\nauthorization_mode = "DenyAll"\n')  # fmt: skip
    proc = subprocess.Popen([*_kbs_cmd(), "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert b"INSECURE" not in out
    cp = subprocess.run([*_kbs_cmd(), "-c", str(tmp_path / "nope.toml")], capture_output=True, timeout=60)
    assert cp.returncode == 1 and b"cannot read config file" in cp.stderr


def test_insecure_header_jwk_warns_at_start(tmp_path: Path) -> None:
    with start_kbs(tmp_path, insecure_header_jwk=True) as kbs:
        pass
    assert "INSECURE" in kbs.log_text() and "insecure_header_jwk" in kbs.log_text()


def test_modern_tls_profile_refuses_tls12(tmp_path: Path) -> None:
    tls = tls_material(tmp_path)
    with start_kbs(tmp_path / "k", tls=tls) as kbs:
        # intermediate (default): TLS 1.2 works
        ctx = ssl.create_default_context(cafile=str(tls[1]))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        assert httpx.get(f"{kbs.url}/healthz", verify=ctx).status_code == 200
    # the same certificate under tls_profile = "modern": TLS 1.3 only
    from tests.kbs.conftest import admin_material
    from tests.support.kbs import write_config

    _, pub = admin_material(tmp_path)
    port = free_port()
    cfg = write_config(tmp_path, port, pub, tls=tls)
    cfg.write_text(
        cfg.read_text().replace("insecure_http = false\n", 'insecure_http = false\ntls_profile = "modern"\n')
    )
    proc = subprocess.Popen(
        [*_kbs_cmd(), "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        ctx13 = ssl.create_default_context(cafile=str(tls[1]))
        deadline = time.time() + 30
        while True:
            try:
                assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx13).status_code == 200
                break
            except httpx.ConnectError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        ctx12 = ssl.create_default_context(cafile=str(tls[1]))
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx12)
    finally:
        proc.terminate()
        proc.wait(10)


def test_graceful_shutdown_and_json_logs(tmp_path: Path) -> None:
    with start_kbs(tmp_path, resources={"a/b/c": b"x"}) as kbs:
        assert kbs.proc is not None
        results: list[int] = []

        def slow_client() -> None:
            # a request in flight when SIGTERM arrives still gets its answer
            try:
                with httpx.Client(timeout=30) as c:
                    results.append(c.get(f"{kbs.url}/metrics").status_code)
            except httpx.ConnectError:
                pass

        t = threading.Thread(target=slow_client)
        t.start()
        kbs.proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert kbs.proc.wait(15) == 0
        assert results in ([200], [])  # answered, or refused before it was accepted; never cut mid-way
        lines = [json.loads(x) for x in kbs.log_text().splitlines() if x.startswith("{")]
        msgs = [x["msg"] for x in lines]
        assert "listening" in msgs and "shutting down" in msgs
        assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
        assert any(x.get("resource") == "a/b/c" for x in lines)
        # no secret material in the logs
        assert kbs.admin_token not in kbs.log_text()


def test_large_bearer_token_reaches_the_verifier(tmp_path: Path) -> None:
    """Multi-GPU EAR tokens are large; a 100 KiB bearer must get trustee's 401, not a 400 from the HTTP layer."""
    with start_kbs(tmp_path, resources={"a/b/c": b"x"}) as kbs:
        big = "e30." + "A" * (100 * 1024) + ".AAAA"
        r = httpx.get(
            f"{kbs.url}/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {big}"}, timeout=30
        )
        assert r.status_code == 401 and r.json()["type"].endswith("/TokenVerifierError")
