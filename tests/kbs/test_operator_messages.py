"""``kbs``: start-up mistakes name the key or file and the fix; one INFO line
states the effective security settings; both log forms keep every field."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbs.cli import main as kbs_main
from tests.kbs.test_peer import tls_material


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, port: int, http: str = "insecure_http = true\n", extra: str = "") -> Path:
    p = tmp / "kbs-config.toml"
    p.write_text(
        f'[http_server]\nsockets = ["127.0.0.1:{port}"]\n{http}'
        '[admin]\nauthorization_mode = "DenyAll"\n'
        f'[storage_backend]\nstorage_type = "LocalFs"\n[storage_backend.backends.local_fs]\ndir_path = "{tmp / "st"}"\n'
        + extra
    )
    return p


def _kbs(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KBS_LOG_LEVEL", "RUST_LOG", "KBS_CONFIG_FILE")}
    return subprocess.run(
        [sys.executable, "-m", "kbs.cli", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_version_log_level_and_missing_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        kbs_main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("kbs ")
    with pytest.raises(SystemExit) as ei:
        kbs_main(["--log-level", "verbose", "-c", "x.toml"])
    assert ei.value.code == 2
    assert "invalid level 'verbose' (choose from trace, debug, info" in capsys.readouterr().err
    cp = _kbs()
    assert cp.returncode == 2 and "--config-file (or the KBS_CONFIG_FILE environment variable)" in cp.stderr


def test_typos_warn_with_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        '[http_server]\ninsecure_htttp = true\n[admin]\nauthorization_mode = "DenyAll"\n'
        '[storage_backend]\nstorage_type = "LocalFs"\n[storage_backend.backends.local_fs]\ndir_pth = "/tmp/x"\n'
        '[attestation_service]\ntype = "coco_as_builtin"\n[attestation_service.attestation_token_brokr]\n'
        "duration_min = 5\n"
    )
    assert kbs_main(["-c", str(cfg), "--check"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert (
        "http_server.insecure_htttp is not a key this KBS reads: ignored (did you mean insecure_http?)"
        in warnings
    )
    assert (
        "storage_backend.backends.local_fs.dir_pth is not a key this KBS reads: ignored (did you mean dir_path?)"
        in warnings
    )
    assert any(
        "attestation_token_brokr" in w and "did you mean attestation_token_broker?" in w for w in warnings
    )


def test_tls_file_errors_name_the_key(tmp_path: Path) -> None:
    kp, cp = tls_material(tmp_path)
    nope = tmp_path / "nope.crt"
    cfg = _config(tmp_path, _free_port(), f'private_key = "{kp}"\ncertificate = "{nope}"\n')
    r = _kbs("-c", str(cfg))
    assert (
        r.returncode == 1 and f"Error: http_server.certificate {nope}: no such file or directory" in r.stderr
    )
    (tmp_path / "o").mkdir()
    other_key, _ = tls_material(tmp_path / "o")
    cfg = _config(tmp_path, _free_port(), f'private_key = "{other_key}"\ncertificate = "{cp}"\n')
    r = _kbs("-c", str(cfg))
    assert r.returncode == 1 and "does not match http_server.certificate" in r.stderr
    assert "_ssl.c" not in r.stderr


def test_port_in_use_names_the_socket(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = _kbs("-c", str(_config(tmp_path, port)))
    assert r.returncode == 1
    assert f"Error: http_server.sockets 127.0.0.1:{port}: address already in use (another KBS?)" in r.stderr
    assert "Errno" not in r.stderr


@pytest.mark.parametrize("plain", [False, True])
def test_start_line_and_fields_in_both_forms(tmp_path: Path, plain: bool) -> None:
    port = _free_port()
    argv = [sys.executable, "-m", "kbs.cli", "-c", str(_config(tmp_path, port))] + (
        ["--plain-logs"] if plain else []
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KBS_LOG_LEVEL", "RUST_LOG")}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "listening" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(lines)
    assert "listening" in text, text
    if plain:
        settings = next(ln for ln in lines if "effective settings" in ln)
        assert " INFO kbs: effective settings " in settings
        assert "tls=false" in settings and "admin_mode=DenyAll" in settings and "storage=LocalFs" in settings
        assert f"storage_dir={tmp_path / 'st'}" in settings
        listening = next(ln for ln in lines if "listening" in ln)
        assert f"socket=127.0.0.1:{port}" in listening and "tls=false" in listening
    else:
        docs = [json.loads(ln) for ln in lines]
        s = next(d for d in docs if d["msg"] == "effective settings")
        assert s["level"] == "INFO" and s["tls"] is False and s["admin_mode"] == "DenyAll"
        assert s["storage_dir"] == str(tmp_path / "st") and s["sockets"] == [f"127.0.0.1:{port}"]


def test_rust_log_is_honoured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KBS_LOG_LEVEL"}
    env["RUST_LOG"] = "error"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbs.cli", "-c", str(_config(tmp_path, port))], stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"listening" not in err and b"effective settings" not in err


def test_admin_refusals_name_the_fix(tmp_path: Path) -> None:
    from kbs.admin_auth import AdminAuthorizer
    from kbs.config import AdminConfig, IdentityProvider, RoleAcl
    from kbs.errors import AdminAccessDenied
    from kbs_protocol.jws import sign

    from .conftest import admin_material

    key, pub = admin_material(tmp_path)
    az = AdminAuthorizer(
        AdminConfig(
            mode="AuthenticatedAuthorization",
            identity_providers=(
                IdentityProvider(issuer="kbs-admins", audience="KBS", public_key_uri=str(pub)),
            ),
            acls=(RoleAcl("admin", "^/kbs/.+$"),),
        )
    )
    now = int(time.time())

    def check(**claims: object) -> str:
        with pytest.raises(AdminAccessDenied) as ei:
            az.check("/kbs/v0/resource-policy", "Bearer " + sign(claims, key, alg="EdDSA"))
        return str(ei.value)

    msg = check(iss="kbs-admins", aud=["KBS"], role="admin", exp=now - 3600)
    assert "token expired at " in msg and "mint a new one" in msg
    msg = check(exp=now + 60)  # what --auth-private-key sends
    assert "token has no 'iss' (wanted 'kbs-admins')" in msg and 'type = "Simple"' in msg
    msg = check(iss="kbs-admins", aud=["KBS"], exp=now + 60)
    assert "token has no role claim; add a 'role'" in msg and "regex_acl" in msg


def test_bearer_jwt_typo_says_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        '[http_server]\ninsecure_http = true\n[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n'
        "[admin.authentication.bearer-jwt]\nidentity_providers = []\n"
    )
    assert kbs_main(["-c", str(cfg), "--check"]) == 1
    assert "unknown field(s) bearer-jwt (did you mean bearer_jwt?)" in capsys.readouterr().err


def test_resource_decisions_are_audit_lines(tmp_path: Path) -> None:
    from tests.support.kbs import start_kbs

    secret = b"do-not-log-this-value"
    with start_kbs(tmp_path / "k", resources={"default/key/one": secret}) as kbs:
        for path in ("default/key/one", "default/key/none"):
            subprocess.run(
                [sys.executable, "-c", "import sys; from kbs_client.cli import main; sys.exit(main())",
                 "--url", kbs.url, "get-resource", "--path", path],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        kbs.set_resource_policy("deny_all")
        subprocess.run(
            [sys.executable, "-c", "import sys; from kbs_client.cli import main; sys.exit(main())",
             "--url", kbs.url, "get-resource", "--path", "default/key/one"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        time.sleep(0.5)
        docs = [json.loads(line) for line in kbs.log_text().splitlines() if line.startswith("{")]
    by_msg = {d["msg"]: d for d in docs}
    rel = by_msg["resource released"]
    assert rel["level"] == "INFO" and rel["resource"] == "default/key/one" and rel["tee"] == "sample"
    assert rel["client"] == "127.0.0.1" and len(rel["claims_sha256"]) == 64 and rel["bytes"] == len(secret)
    assert by_msg["resource not found"]["resource"] == "default/key/none"
    assert by_msg["resource refused by the resource policy"]["tee"] == "sample"
    assert secret.decode() not in kbs.log_text()
