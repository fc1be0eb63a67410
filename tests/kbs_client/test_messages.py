"""``kbs-client``: every operator mistake gets one line naming cause and fix,
never a secret, and only what can heal is retried."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kbs_client import _http
from kbs_client.cli import main
from kbs_client.errors import (
    AdminDenied,
    KbsHttpError,
    PolicyInvalid,
    ProtocolError,
    ResourceNotFound,
    TransportError,
)
from tests.support.kbs import start_kbs

ERR = "https://github.com/confidential-containers/kbs/errors/"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pem_key(tmp_path: Path) -> tuple[Path, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "admin.key"
    path.write_text(pem)
    return path, pem.splitlines()[1]


def test_private_key_as_admin_token_is_named_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path, body = pem_key(tmp_path)
    rc, out, err = run(
        capsys, "--url", "http://127.0.0.1:1", "config", "--admin-token-file", str(path), "delete-resource",
        "--path", "default/a/b",
    )  # fmt: skip
    assert rc == 1
    assert f"--admin-token-file {path} contains a PEM private key, not a JWT" in err
    assert "--auth-private-key" in err
    assert body not in err + out + caplog.text and "BEGIN" not in err


def test_non_jwt_token_file_is_refused_without_echo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = tmp_path / "tok"
    tok.write_text("s3cr3t value\nwith lines")
    rc, _, err = run(capsys, "config", "--admin-token-file", str(tok), "delete-resource", "--path", "a/b/c")
    assert rc == 1 and "does not hold a JWT" in err and "s3cr3t" not in err


def test_header_that_cannot_be_sent_is_never_quoted() -> None:
    # h11 quotes the illegal header value in its exception: the classifier must not
    exc = httpx.LocalProtocolError("Illegal header value b'Bearer hunter2\\nx'")
    te = _http.transport_error("POST", "http://k:8080/kbs/v0/resource-policy", exc)
    assert "hunter2" not in str(te) and "could not be built" in str(te) and not te.retryable


def test_connection_refused_fails_at_once(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = closed_port()
    rc, _, err = run(capsys, "--url", f"http://127.0.0.1:{port}", "attest")
    assert rc == 1
    assert f"cannot connect to 127.0.0.1:{port} (connection refused): is the KBS running" in err
    assert "ConnectError" not in err and "Errno" not in err
    assert not [r for r in caplog.records if "RCAR attempt" in r.getMessage()]


def test_url_is_checked_at_argument_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("localhost:8080", "ftp://h/", "https://"):
        with pytest.raises(SystemExit) as ei:
            main(["--url", bad, "attest"])
        assert ei.value.code == 2
        assert "is not an http:// or https:// URL" in capsys.readouterr().err


def test_help_names_default_url_and_token_paths(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "default: http://127.0.0.1:8080" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    assert "~/.trustee/admin-token" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("kbs-client ")


def test_file_errors_name_flag_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nope = tmp_path / "nope.crt"
    rc, _, err = run(capsys, "--cert-file", str(nope), "attest")
    assert rc == 1 and err.strip() == f"Error: --cert-file {nope}: no such file or directory"
    notpem = tmp_path / "token"
    notpem.write_text("eyJhbGciOi.eyJ.sig")
    rc, _, err = run(capsys, "--cert-file", str(notpem), "attest")
    assert rc == 1 and f"--cert-file {notpem}: no PEM certificate in file" in err
    rc, _, err = run(
        capsys, "config", "--admin-token-file", str(tmp_path / "t"), "delete-resource", "--path", "a/b/c"
    )
    assert rc == 1 and f"--admin-token-file {tmp_path / 't'}: no such file" in err
    assert "FileNotFoundError" not in err


def reply(status: int, variant: str, detail: str) -> _http.Reply:
    body = json.dumps({"type": ERR + variant, "detail": detail}).encode()
    return _http.Reply(status, body, httpx.Headers(), None)


def test_admin_refusals_are_labelled_by_cause() -> None:
    assert isinstance(_http.kbs_error(reply(401, "AdminAuthAccess", "role"), "admin"), AdminDenied)
    nf = _http.kbs_error(
        reply(401, "PluginInternalError", "Plugin internal error: resource not found"), "admin"
    )
    assert isinstance(nf, ResourceNotFound) and not isinstance(nf, AdminDenied)
    pe = _http.kbs_error(reply(401, "ParsePolicyError", "policy is not valid Rego"), "admin")
    assert isinstance(pe, PolicyInvalid) and not isinstance(pe, AdminDenied)
    other = _http.kbs_error(reply(401, "PluginInternalError", "storage is broken"), "admin")
    assert type(other) is KbsHttpError


def test_timeouts_retry_permanent_failures_do_not() -> None:
    assert _http.transport_error("GET", "http://h:1/x", httpx.ReadTimeout("t")).retryable
    assert not _http.transport_error("GET", "h:1/x", httpx.UnsupportedProtocol("no scheme")).retryable
    closed = _http.transport_error("POST", "http://h:8443/kbs/v0/auth", httpx.RemoteProtocolError("gone"))
    assert "does it expect https://?" in str(closed)
    assert isinstance(closed, TransportError)


def test_real_kbs_delete_missing_and_bad_rego(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.rego").write_text("package policy\nallow := {{{\n")
    with start_kbs(tmp_path / "k") as kbs:
        cfg = ["--url", kbs.url, "config", "--admin-token-file", str(kbs.admin_token_file)]
        rc, _, err = run(capsys, *cfg, "delete-resource", "--path", "default/secert/one")
        assert rc == 1 and err.startswith("Error: ResourceNotFound: "), err
        rc, _, err = run(capsys, *cfg, "set-resource-policy", "--policy-file", str(tmp_path / "bad.rego"))
        assert rc == 1 and err.startswith("Error: PolicyInvalid: "), err
        assert "policy is not valid Rego: line 2, column " in err and "unclosed" in err
        assert "AdminDenied" not in err


def test_policies_can_be_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rego = "package policy\n\ndefault allow := false\n\nallow if {\n  input.submods.cpu0 != null\n}\n"
    (tmp_path / "p.rego").write_text(rego)
    with start_kbs(tmp_path / "k") as kbs:
        cfg = ["--url", kbs.url, "config", "--admin-token-file", str(kbs.admin_token_file)]
        assert run(capsys, *cfg, "set-resource-policy", "--policy-file", str(tmp_path / "p.rego"))[0] == 0
        rc, out, err = run(capsys, *cfg, "get-resource-policy")
        assert rc == 0 and out == rego, err
        rc, out, err = run(capsys, *cfg, "get-attestation-policy")
        assert rc == 0 and "package policy" in out, err
        rc, _, err = run(capsys, *cfg, "get-attestation-policy", "--id", "nope")
        assert rc == 1 and "attestation-policy nope not found" in err
        rc, _, err = run(capsys, "--url", kbs.url, "config", "--admin-token-file", str(tmp_path / "p.rego"),
                         "get-resource-policy")  # fmt: skip
        assert rc == 1 and "does not hold a JWT" in err


def test_policy_that_can_never_allow_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "kbs.rego").write_text("package kbs\n\ndefault allow := true\n")
    caplog.set_level(logging.WARNING)
    with start_kbs(tmp_path / "k") as kbs:
        cfg = ["--url", kbs.url, "config", "--admin-token-file", str(kbs.admin_token_file)]
        assert run(capsys, *cfg, "set-resource-policy", "--policy-file", str(tmp_path / "kbs.rego"))[0] == 0
    assert "not 'package policy'" in caplog.text and "deny every request" in caplog.text


def test_plain_http_to_a_tls_kbs_names_https_and_is_not_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.kbs.test_peer import tls_material

    caplog.set_level(logging.INFO)
    with start_kbs(tmp_path / "k", tls=tls_material(tmp_path)) as kbs:
        assert kbs.url.startswith("https://")
        plain = "http://" + kbs.url.removeprefix("https://")
        rc, _, err = run(capsys, "--url", plain, "attest")
    assert rc == 1
    host_port = plain.removeprefix("http://").rstrip("/")
    assert (
        f"the server at {host_port} closed the connection without answering; does it expect https://?" in err
    )
    assert "RemoteProtocolError" not in err and "ReadError" not in err
    assert not [r for r in caplog.records if "RCAR attempt" in r.getMessage()]


@pytest.mark.parametrize("nonce", ['{"a": 1, "a": 2}', '{"a": NaN}', "[1]", "not json"])
def test_se_nonce_is_parsed_strictly(nonce: str) -> None:
    from kbs_client.rcar import se_request_with_digest

    with pytest.raises(ProtocolError, match="SeAttestationRequest"):
        se_request_with_digest(nonce, b"\0" * 32)
