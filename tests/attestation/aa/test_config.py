"""aa.toml parsing and the aa_kbc_params fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation.aa.config import (
    AaConfig,
    KbsTokenConfig,
    config_from_kbc_params,
    load_config,
    read_kbc_params,
    resolve_config,
)
from attestation.aa.errors import AaConfigError

FULL = """
[token_configs.kbs]
url = "https://kbs.example:8080/"
cert = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----"
tee_key_algorithm = "RSA-OAEP-256"
[token_configs.coco_as]
url = "http://127.0.0.1:8000"
[eventlog_config]
init_pcr = 16
enable_eventlog = true
[log]
level = "debug"
"""


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "aa.toml").write_text(FULL)
    c = load_config(tmp_path / "aa.toml")
    assert c.kbs is not None and c.kbs.url == "https://kbs.example:8080"
    assert c.kbs.cert is not None and c.kbs.cert.startswith("-----BEGIN CERTIFICATE-----")
    assert c.kbs.tee_key_algorithm == "RSA-OAEP-256"
    assert c.coco_as is not None and c.coco_as.url == "http://127.0.0.1:8000"
    assert c.eventlog.init_pcr == 16 and c.eventlog.enable_eventlog
    assert c.log_level == "debug"
    assert c.unknown_keys == ()


def test_defaults(tmp_path: Path) -> None:
    (tmp_path / "aa.toml").write_text('[token_configs.kbs]\nurl = "http://10.0.2.2:8080"\n')
    c = load_config(tmp_path / "aa.toml")
    assert c.kbs is not None and c.kbs.tee_key_algorithm == "ECDH-ES+A256KW-P256" and c.kbs.cert is None
    assert c.coco_as is None
    assert c.eventlog.init_pcr == 17 and not c.eventlog.enable_eventlog


def test_json_config(tmp_path: Path) -> None:
    (tmp_path / "aa.json").write_text('{"token_configs": {"kbs": {"url": "http://k:1"}}}')
    c = load_config(tmp_path / "aa.json")
    assert c.kbs is not None and c.kbs.url == "http://k:1"
    (tmp_path / "dup.json").write_text('{"token_configs": {}, "token_configs": {}}')
    with pytest.raises(AaConfigError, match="duplicate"):
        load_config(tmp_path / "dup.json")


def test_unknown_keys_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "aa.toml").write_text(
        '[token_configs.kbs]\nurl = "http://k:1"\nbogus = 1\n[token_configs.other]\nx=1\n[extra]\n'
    )
    c = load_config(tmp_path / "aa.toml")
    assert c.unknown_keys == ("extra", "token_configs.kbs.bogus", "token_configs.other")
    assert "token_configs.kbs.bogus" in caplog.text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[token_configs.kbs]\ncert = 'x'\n", "token_configs.kbs.url is required"),
        ("[token_configs.kbs]\nurl = 3\n", "token_configs.kbs.url must be a string, not int"),
        ("[token_configs.kbs]\nurl = 'http://x'\ntee_key_algorithm = 'P-384'\n", "tee_key_algorithm"),
        ("[eventlog_config]\ninit_pcr = '17'\n", "eventlog_config.init_pcr must be an integer, not str"),
        ("[eventlog_config]\ninit_pcr = 99\n", "out of range"),
        (
            "[eventlog_config]\nenable_eventlog = 1\n",
            "eventlog_config.enable_eventlog must be a boolean, not int",
        ),
        (
            "[eventlog_config]\ninit_pcr = true\n",
            "eventlog_config.init_pcr must be an integer, not a boolean",
        ),
        ("token_configs = 5\n", "token_configs must be a table, not int"),
        ("[token_configs.kbs\n", "not valid TOML"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "aa.toml").write_text(text)
    with pytest.raises(AaConfigError) as ei:
        load_config(tmp_path / "aa.toml")
    assert needle in str(ei.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AaConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_kbc_params(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080 quiet\n")
    assert read_kbc_params({}, cmdline) == "cc_kbc::http://10.0.2.2:8080"
    assert read_kbc_params({"AA_KBC_PARAMS": "cc_kbc::http://env:1"}, cmdline) == "cc_kbc::http://env:1"
    assert read_kbc_params({}, tmp_path / "missing") is None
    c = resolve_config(None, env={}, cmdline_path=cmdline)
    assert c.kbs is not None and c.kbs.url == "http://10.0.2.2:8080" and c.kbs.cert is None
    assert config_from_kbc_params("offline_fs_kbc::null") == AaConfig()
    assert config_from_kbc_params(None).kbs is None
    # as upstream (KbsTokenConfig::new().ok()): malformed params leave the AA without a KBS, not unstarted
    assert config_from_kbc_params("cc_kbc") == AaConfig()
    assert config_from_kbc_params("cc_kbc::http://a::b") == AaConfig()
    assert config_from_kbc_params("") == AaConfig()
    # and the URL is taken as given (checked at first use)
    assert config_from_kbc_params("cc_kbc::ftp://x").kbs == KbsTokenConfig("ftp://x")
    assert config_from_kbc_params("cc_kbc::").kbs == KbsTokenConfig("")
    # a set-but-empty AA_KBC_PARAMS is used (upstream env::var is_ok), hiding the cmdline
    assert read_kbc_params({"AA_KBC_PARAMS": ""}, cmdline) == ""
    # a config file wins over the kernel command line
    (tmp_path / "aa.toml").write_text('[token_configs.kbs]\nurl = "http://file:1"\n')
    c2 = resolve_config(tmp_path / "aa.toml", env={}, cmdline_path=cmdline)
    assert c2.kbs is not None and c2.kbs.url == "http://file:1"
