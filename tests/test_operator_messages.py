"""Guest tools: typos are named with the closest key, causes and fixes are said,
and every console script answers ``--version`` and validates ``--log-level``."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from attestation.aa.config import parse_config
from attestation.aa.errors import AaConfigError
from cdh.config import load_config as load_cdh_config
from kbs_client._http import transport_error

SCRIPTS = {
    "attestation-agent": "attestation.aa.cli:main",
    "confidential-data-hub": "cdh.cli:main",
    "cdh-oneshot": "cdh.oneshot:main",
    "api-server-rest": "cdh.api_server_rest:main",
    "kbs-client": "kbs_client.cli:main",
    "kbs": "kbs.cli:main",
    "coco-image": "image_pull.cli:main",
    "coco-verify": "attestation.verify_cli:main",
    "coco-guest-pull": "guest_pull.cli:main",
    "grpc-as": "kbs.grpc_as:main",
    "rvps": "kbs.rvps_server:main",
}


def script(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run console script ``name`` as its entry point does."""
    mod, func = SCRIPTS[name].split(":")
    code = f"import sys; from {mod} import {func}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)


def test_every_console_script_is_listed_here() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version(name: str) -> None:
    cp = script(name, "--version")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith(f"{name} ") and "(coco-py)" in cp.stdout


@pytest.mark.parametrize(
    "name",
    [
        "attestation-agent",
        "confidential-data-hub",
        "api-server-rest",
        "kbs",
        "cdh-oneshot",
        "grpc-as",
        "rvps",
    ],
)
def test_log_level_is_validated(name: str) -> None:
    cp = script(name, "--log-level", "verbose")
    assert cp.returncode == 2 and "verbose" in cp.stderr and "choose from" in cp.stderr


def test_aa_config_typos_name_the_closest_key(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AaConfigError) as ei:
        parse_config({"token_configs": {"kbs": {"ur": "http://k:8080"}}})
    assert (
        "token_configs.kbs.url is required (found unknown key token_configs.kbs.ur: a typo for url?)"
        in str(ei.value)
    )
    with caplog.at_level(logging.WARNING):
        c = parse_config({"token_configs": {"kbs": {"url": "http://k", "tee_key_algoritm": "RSA-OAEP-256"}}})
    assert c.unknown_keys == ("token_configs.kbs.tee_key_algoritm",)
    assert (
        "unknown key token_configs.kbs.tee_key_algoritm in [token_configs.kbs] (did you mean tee_key_algorithm?)"
        in caplog.text
    )


def test_aa_cert_must_be_pem_text_not_a_path() -> None:
    with pytest.raises(AaConfigError, match=r"token_configs.kbs.cert must be the PEM text .* not a path"):
        parse_config({"token_configs": {"kbs": {"url": "https://k", "cert": "/etc/kbs.crt"}}})


def test_cdh_config_typo_names_the_closest_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "cdh.toml"
    p.write_text('[kbc]\nname = "cc_kbc"\nurl = "https://k:8080"\nkbs_certs = "x"\n')
    with caplog.at_level(logging.WARNING, logger="cdh.config"):
        c = load_cdh_config(p, cmdline="", env={})
    assert c.unknown_keys == ("kbc.kbs_certs",)
    assert "kbc.kbs_certs in [kbc] (did you mean kbs_cert?)" in caplog.text


def test_cdh_names_tls_as_the_cause() -> None:
    """The CDH's KBS requests go through kbs_client: its transport errors name the
    cause and the CDH's setting that fixes it."""
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate"
    exc = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]")
    exc.__cause__ = err
    msg = str(transport_error("GET", "https://k:8080/kbs/v0/resource/a/b/c", exc))
    assert "the certificate of the KBS at k:8080 is not trusted (self-signed certificate)" in msg
    assert "kbs_cert" in msg
    refused = httpx.ConnectError("All connection attempts failed")
    refused.__cause__ = ConnectionRefusedError(111, "refused")
    msg = str(transport_error("GET", "http://k:8080/kbs/v0/resource/a/b/c", refused))
    assert "cannot connect to k:8080 (connection refused): is the KBS running" in msg


def test_oneshot_without_config_or_socket_says_what_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cdh import oneshot

    monkeypatch.setenv("OFFLINE_FS_KBC_EXTRA_FILE_PATH", str(tmp_path / "none.json"))
    monkeypatch.delenv("AA_KBC_PARAMS", raising=False)
    with caplog.at_level(logging.WARNING):
        oneshot.main(["-r", "0", "get-resource", "-r", "kbs:///default/k/v"])
    assert (
        "no -c/--socket" in caplog.text
        and "--socket unix:///run/confidential-containers/cdh.sock" in caplog.text
    )


def test_initdata_typos_are_named(caplog: pytest.LogCaptureFixture) -> None:
    from attestation.initdata import parse_initdata

    doc = (
        b'version = "0.1.0"\nalgorithm = "sha256"\nalgoritm = "x"\n[data]\n"aa.tml" = "x"\n"app.conf" = "y"\n'
    )
    with caplog.at_level(logging.WARNING):
        parse_initdata(doc)
    assert "initdata: unknown key algoritm at the top level: ignored (did you mean algorithm?)" in caplog.text
    assert "initdata: data.aa.tml is not a file the guest reads (did you mean aa.toml?)" in caplog.text
    assert "app.conf" not in caplog.text  # workload files are not typos


def test_guest_pull_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_text("kind: Pod\nspec: {containers: [\n")
    cp = script("coco-guest-pull", "simulate", "--runtime-class", "kata-qemu-coco-dev", str(pod))
    assert cp.returncode == 2
    assert f"pod: {pod} is not valid YAML at line 3, column 1" in cp.stderr
