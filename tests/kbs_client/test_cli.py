"""``kbs-client`` (in-process main()) against the real ``kbs`` process."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from kbs_client.cli import main
from kbs_client.tee_key import TeeKeyPair
from tests.support.kbs import start_kbs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    secret = os.urandom(33)
    (tmp_path / "secret").write_bytes(secret)
    with start_kbs(tmp_path / "k", policy=None) as kbs:
        cfg = ["--url", kbs.url, "config", "--admin-token-file", str(kbs.admin_token_file)]
        rc, out, _ = run(capsys, *cfg, "set-resource-policy", "--allow-all")
        assert rc == 0 and out.startswith("Set resource policy success \n policy: ")
        rc, out, _ = run(
            capsys,
            *cfg,
            "set-resource",
            "--path",
            "default/k/one",
            "--resource-file",
            str(tmp_path / "secret"),
        )
        assert rc == 0 and out == f"Set resource success \n resource: {base64.b64encode(secret).decode()}\n"

        rc, out, _ = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one")
        assert rc == 0 and base64.b64decode(out.strip().splitlines()[-1], validate=True) == secret
        rc, out, _ = run(capsys, "--url", kbs.url, "get-resource", "--path", "kbs:///default/k/one")
        assert rc == 0 and base64.b64decode(out.strip()) == secret

        # attest with an RSA PKCS#1 key, then passport mode with the token and the same key
        key = TeeKeyPair.generate("RSA-OAEP-256")
        (tmp_path / "tee.pem").write_text(key.private_pem())
        rc, out, _ = run(capsys, "--url", kbs.url, "attest", "--tee-key-file", str(tmp_path / "tee.pem"))
        token = out.strip()
        assert rc == 0 and token.count(".") == 2
        (tmp_path / "token").write_text(token)
        rc, out, _ = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one",
                         "--attestation-token", str(tmp_path / "token"), "--tee-key-file", str(tmp_path / "tee.pem"))  # fmt: skip
        assert rc == 0 and base64.b64decode(out.strip()) == secret
        rc, _, err = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one",
                         "--attestation-token", str(tmp_path / "token"))  # fmt: skip
        assert rc == 1 and err.startswith("Error:") and "--tee-key-file" in err
        # a token bound to another key decrypts to nothing useful: JWE error
        (tmp_path / "other.pem").write_text(TeeKeyPair.generate().private_pem())
        rc, _, err = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one",
                         "--attestation-token", str(tmp_path / "token"), "--tee-key-file", str(tmp_path / "other.pem"))  # fmt: skip
        assert rc == 1 and "JweError" in err

        # init-data (positional TOML) lands in the token
        toml = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\nk = "v"\n'
        rc, out, _ = run(capsys, "--url", kbs.url, "attest", toml)
        payload = json.loads(base64.urlsafe_b64decode(out.strip().split(".")[1] + "=="))
        assert payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_claims"] == {"k": "v"}

        # reference values: string list by default, Rust-debug-quoted output
        rc, out, _ = run(capsys, *cfg, "set-sample-reference-value", "svn", "1")
        assert rc == 0 and out == "Reference Values Updated\n"
        rc, out, _ = run(
            capsys,
            *cfg,
            "set-sample-reference-value",
            "major_version",
            "1",
            "--as-integer",
            "--as-single-value",
        )
        assert rc == 0
        rc, out, _ = run(capsys, *cfg, "get-reference-value", "--id", "svn")
        assert rc == 0 and out == '"[\\"1\\"]"\n'
        rc, out, _ = run(capsys, *cfg, "get-reference-value", "--id", "major_version")
        assert out == '"1"\n'

        rego = tmp_path / "cpu.rego"
        rego.write_text('package policy\nimport rego.v1\ntrust_claims := {"hardware": 2}\n')
        rc, out, _ = run(capsys, *cfg, "set-attestation-policy", "--policy-file", str(rego))
        assert rc == 0 and out.startswith("Set attestation policy success \n policy: ")

        # deny-all, then delete
        rc, _, _ = run(capsys, *cfg, "set-resource-policy", "--deny-all")
        rc, _, err = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one")
        assert rc == 1 and "PolicyDeny" in err
        rc, _, _ = run(capsys, *cfg, "set-resource-policy", "--affirming")
        assert rc == 0
        rc, _, _ = run(capsys, *cfg, "set-resource-policy", "--allow-all")
        rc, out, _ = run(capsys, *cfg, "delete-resource", "--path", "default/k/one")
        assert rc == 0 and out == "Delete resource success\n"
        rc, _, err = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/one")
        assert rc == 1 and "ResourceNotFound" in err

        # anonymous admin call: no token file here or in ~/.trustee
        rc, _, err = run(capsys, "--url", kbs.url, "config", "set-resource", "--path", "a/b/c",
                         "--resource-file", str(tmp_path / "secret"))  # fmt: skip
        assert rc == 1 and "AdminDenied" in err and "AdminAuthInitialization" in err


@pytest.mark.parametrize("style", ["simple", "legacy-key"])
def test_cli_ed25519_admin_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], style: str) -> None:
    (tmp_path / "s").write_bytes(b"legacy")
    with start_kbs(tmp_path / "k", policy=None, admin_style=style) as kbs:
        cfg = ["--url", kbs.url, "config", "--auth-private-key", str(kbs.admin_private_key_file)]
        rc, _, err = run(capsys, *cfg, "set-resource-policy", "--allow-all")
        assert rc == 0, err
        rc, _, err = run(
            capsys, *cfg, "set-resource", "--path", "default/k/l", "--resource-file", str(tmp_path / "s")
        )
        assert rc == 0, err
        rc, out, _ = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/l")
        assert rc == 0 and base64.b64decode(out.strip()) == b"legacy"
        other = TeeKeyPair.generate()  # not an Ed25519 key
        (tmp_path / "bad.pem").write_text(other.private_pem())
        rc, _, err = run(capsys, "--url", kbs.url, "config", "--auth-private-key", str(tmp_path / "bad.pem"),
                         "set-resource-policy", "--deny-all")  # fmt: skip
        assert rc == 1 and "Ed25519" in err


def test_cli_https_cert_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.kbs.test_peer import tls_material

    tls = tls_material(tmp_path)
    with start_kbs(tmp_path / "k", tls=tls, resources={"default/k/t": b"tls"}) as kbs:
        rc, out, err = run(
            capsys, "--url", kbs.url, "--cert-file", str(tls[1]), "get-resource", "--path", "default/k/t"
        )
        assert rc == 0, err
        assert base64.b64decode(out.strip()) == b"tls"
        caplog.set_level("WARNING")
        rc, _, err = run(capsys, "--url", kbs.url, "get-resource", "--path", "default/k/t")
        # a TLS verification failure is permanent: one line naming cause and fix, no retries
        assert rc == 1 and "is not trusted" in err and "--cert-file" in err, err
        assert not [r for r in caplog.records if "RCAR attempt" in r.getMessage()]
