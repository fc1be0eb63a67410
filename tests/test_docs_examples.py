"""The copy-paste configs in docs/examples load, and do what the docs say."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kbs.cli import main as kbs_main
from tests.kbs.test_peer import tls_material
from tests.support.kbs import make_admin_token

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "docs" / "examples"
KBS_CONFIGS = sorted(p.name for p in EX.glob("kbs-*.toml"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _materialise(
    tmp: Path, name: str, port: int, *, dev: bool = False
) -> tuple[Path, ed25519.Ed25519PrivateKey, Path]:
    """The example with its /etc/kbs and /var/lib/kbs files made in ``tmp``; ``dev``: with its
    commented-out development table (the sample TEE) switched on."""
    etc = tmp / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    kp, cp = tls_material(etc)
    kp.rename(etc / "tls.key")
    cp.rename(etc / "tls.crt")
    key = ed25519.Ed25519PrivateKey.generate()
    (etc / "admin.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (etc / "admin.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    text = (EX / name).read_text()
    text = text.replace("/etc/kbs/", f"{etc}/").replace("/var/lib/kbs/", f"{tmp}/var/")
    text = text.replace("0.0.0.0:8443", f"127.0.0.1:{port}").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    if dev:
        assert "# [security]\n# dev_verifiers" in text
        text = text.replace("# [security]\n# dev_verifiers", "[security]\ndev_verifiers")
    cfg = tmp / name
    cfg.write_text(text)
    return cfg, key, etc / "tls.crt"


@contextlib.contextmanager
def _running(cfg: Path, port: int) -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "KBS_LOG_LEVEL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbs.cli", "-c", str(cfg)], stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "kbs did not start"
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _client(*argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from kbs_client.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)


def _quickstart_token(admin_key: Path) -> str:
    """Run the token-minting snippet of docs/operator/quickstart.md as written."""
    doc = (ROOT / "docs" / "operator" / "quickstart.md").read_text()
    start = doc.index("<<'PY' > ~/.trustee/admin-token\n") + len("<<'PY' > ~/.trustee/admin-token\n")
    snippet = doc[start : doc.index("\nPY\n", start)].replace("/etc/kbs/admin.key", str(admin_key))
    cp = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


@pytest.mark.parametrize("name", KBS_CONFIGS)
def test_kbs_examples_pass_the_strict_check(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _, _ = _materialise(tmp_path, name, _port())
    rc = kbs_main(["-c", str(cfg), "--check", "--strict"])
    assert rc == 0, capsys.readouterr().err


def test_https_token_example_with_sample_policy(tmp_path: Path) -> None:
    port = _port()
    # as shipped, the example refuses the unsigned sample TEE
    cfg, key, ca = _materialise(tmp_path / "shipped", "kbs-https-token.toml", port)
    with _running(cfg, port):
        cp = _client("--url", f"https://127.0.0.1:{port}", "--cert-file", str(ca), "attest")
        assert cp.returncode != 0 and "sample" in cp.stderr
    cfg, key, ca = _materialise(tmp_path, "kbs-https-token.toml", port, dev=True)
    url = f"https://127.0.0.1:{port}"
    token = tmp_path / "admin-token"
    token.write_text(_quickstart_token(tmp_path / "etc" / "admin.key"))
    (tmp_path / "secret").write_bytes(b"s3cret")
    admin = ["--url", url, "--cert-file", str(ca), "config", "--admin-token-file", str(token)]
    with _running(cfg, port):
        cp = _client(
            *admin, "set-resource", "--path", "default/key/one", "--resource-file", str(tmp_path / "secret")
        )
        assert cp.returncode == 0, cp.stderr
        cp = _client(*admin, "set-resource-policy", "--policy-file", str(EX / "resource-policy-sample.rego"))
        assert cp.returncode == 0, cp.stderr
        cp = _client(*admin, "get-resource-policy")
        assert cp.returncode == 0 and cp.stdout == (EX / "resource-policy-sample.rego").read_text()
        # the sample TEE's claims satisfy the example policy (svn 1, not debug, launch digest abcde)
        cp = _client("--url", url, "--cert-file", str(ca), "get-resource", "--path", "default/key/one")
        assert cp.returncode == 0, cp.stderr
        assert base64.b64decode(cp.stdout.strip()) == b"s3cret"
        # ... and only for the "default" repository
        cp = _client(
            *admin, "set-resource", "--path", "other/key/one", "--resource-file", str(tmp_path / "secret")
        )
        assert cp.returncode == 0, cp.stderr
        cp = _client("--url", url, "--cert-file", str(ca), "get-resource", "--path", "other/key/one")
        assert cp.returncode == 1 and "PolicyDenied" in cp.stderr
        # a token with a role the ACL does not know is refused
        token.write_text(make_admin_token(key, issuer="kbs-admins", audience="KBS", role="reader"))
        cp = _client(*admin, "get-resource-policy")
        assert cp.returncode == 1 and "AdminDenied" in cp.stderr


def test_https_simple_example_with_auth_private_key(tmp_path: Path) -> None:
    port = _port()
    cfg, _, ca = _materialise(tmp_path, "kbs-https-simple.toml", port)
    (tmp_path / "secret").write_bytes(b"x")
    with _running(cfg, port):
        cp = _client("--url", f"https://127.0.0.1:{port}", "--cert-file", str(ca), "config",
                     "--auth-private-key", str(tmp_path / "etc" / "admin.key"),
                     "set-resource", "--path", "default/key/one", "--resource-file", str(tmp_path / "secret"))  # fmt: skip
        assert cp.returncode == 0, cp.stderr


def test_deny_all_example_refuses_the_admin_api(tmp_path: Path) -> None:
    port = _port()
    cfg, key, ca = _materialise(tmp_path, "kbs-https-deny-all.toml", port)
    token = tmp_path / "admin-token"
    token.write_text(make_admin_token(key, issuer="kbs-admins", audience="KBS", role="admin"))
    with _running(cfg, port):
        cp = _client("--url", f"https://127.0.0.1:{port}", "--cert-file", str(ca), "config",
                     "--admin-token-file", str(token), "get-resource-policy")  # fmt: skip
        assert cp.returncode == 1 and "AdminDenied" in cp.stderr


def test_aa_and_cdh_examples_load(tmp_path: Path) -> None:
    import tomllib

    from attestation.aa.config import parse_config
    from cdh.config import load_config

    aa = parse_config(tomllib.loads((EX / "aa.toml").read_text()))
    assert aa.kbs is not None and aa.kbs.url == "https://kbs.example:8443" and aa.unknown_keys == ()
    assert aa.kbs.cert is not None and aa.kbs.cert.strip().startswith("-----BEGIN CERTIFICATE-----")
    cdh = load_config(EX / "cdh.toml", cmdline="", env={})
    assert cdh.kbc.name == "cc_kbc" and cdh.kbc.url == "https://kbs.example:8443" and cdh.unknown_keys == ()
    assert cdh.image.image_security_policy_uri == "kbs:///default/security-policy/test"


def test_snp_and_tdx_policy_examples_verify_real_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    from attestation.verify_cli import EXIT_VERIFIED, main

    from .attestation.tdx._data import QVL_TDX, QVL_TDX_COLL

    snp = QVL_TDX.parents[2] / "snp" / "trustee"
    if not (snp / "test-report.bin").is_file():
        pytest.skip("SNP evidence vectors not present")
    rc = main(["snp", str(snp / "test-report.bin"), "--vcek", str(snp / "test-vcek.der"),
               "--policy", str(EX / "snp-policy.json")])  # fmt: skip
    assert rc == EXIT_VERIFIED, capsys.readouterr().err
    rc = main(["tdx", str(QVL_TDX), "--collateral", str(QVL_TDX_COLL), "--at", "2025-07-01T00:00:00Z",
               "--policy", str(EX / "tdx-policy.json")])  # fmt: skip
    assert rc == EXIT_VERIFIED, capsys.readouterr().err
