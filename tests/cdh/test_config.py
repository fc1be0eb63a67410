from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

import pytest

from cdh.config import (
    DEFAULT_AA_SOCKET,
    DEFAULT_CDH_SOCKET,
    DEFAULT_IMAGE_WORK_DIR,
    check_credential_path,
    export_environment,
    load_config,
    parse_kernel_cmdline,
)
from cdh.errors import CdhConfigError
from image_pull.registries_conf import ProxyConfig

FULL = """
socket = "unix:///tmp/x/cdh.sock"
skip_sealed_secret_verification = false
[aa]
aa_socket = "unix:///tmp/x/aa.sock"
[kbc]
name = "cc_kbc"
url = "http://kbs:8080"
kbs_cert = "-----BEGIN CERTIFICATE-----"
[[credentials]]
resource_uri = "kbs:///default/aliyun/ecs_ram_role"
path = "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/ecsRamRole.json"
[image]
work_dir = "/run/image-rs"
image_security_policy_uri = "kbs:///default/security-policy/test"
sigstore_config_uri = "kbs:///default/sigstore-config/test"
authenticated_registry_credentials_uri = "kbs:///default/credential/test"
registry_configuration_uri = "kbs:///default/registry-configuration/test"
max_concurrent_layer_downloads_per_image = 5
extra_root_certificates = ["PEM1", "PEM2"]
[image.registry_config]
unqualified-search-registries = ["docker.io"]
[[image.registry_config.registry]]
prefix = "example.com/foo"
location = "internal/bar"
insecure = true
[[image.registry_config.registry.mirror]]
location = "mirror.local/foo"
insecure = false
[image.image_pull_proxy]
https_proxy = "http://127.0.0.1:5432"
http_proxy = "http://127.0.0.1:5433"
no_proxy = "192.168.0.1,localhost"
[log]
level = "debug"
"""


def cfg_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cdh.toml"
    p.write_text(text)
    return p


def test_full_current_config(tmp_path: Path) -> None:
    c = load_config(cfg_file(tmp_path, FULL), cmdline="agent.https_proxy=http://ignored", env={})
    assert c.source == "file" and c.unknown_keys == ()
    assert c.socket == "unix:///tmp/x/cdh.sock" and c.aa_socket == "unix:///tmp/x/aa.sock"
    assert (c.kbc.name, c.kbc.url, c.kbc.kbs_cert) == (
        "cc_kbc",
        "http://kbs:8080",
        "-----BEGIN CERTIFICATE-----",
    )
    assert c.credentials[0].path == PurePosixPath(
        "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/ecsRamRole.json"
    )
    i = c.image
    assert i.work_dir == Path("/run/image-rs") and i.max_concurrent_layer_downloads_per_image == 5
    assert i.image_security_policy_uri == "kbs:///default/security-policy/test"
    assert i.extra_root_certificates == ("PEM1", "PEM2")
    assert i.image_pull_proxy == ProxyConfig(
        "http://127.0.0.1:5432", "http://127.0.0.1:5433", ("192.168.0.1", "localhost")
    )
    rc = i.registry_config
    assert rc is not None and rc.unqualified_search_registries == ("docker.io",)
    r = rc.registries[0]
    assert (r.prefix, r.location, r.insecure, r.blocked) == ("example.com/foo", "internal/bar", True, False)
    assert r.mirrors[0].location == "mirror.local/foo"
    assert c.log_level == "debug"


def test_minimal_config_defaults(tmp_path: Path) -> None:
    c = load_config(cfg_file(tmp_path, '[kbc]\nname = "offline_fs_kbc"\n'), cmdline="", env={})
    assert c.socket == DEFAULT_CDH_SOCKET and c.aa_socket == DEFAULT_AA_SOCKET
    assert c.image.work_dir == DEFAULT_IMAGE_WORK_DIR and c.image.image_pull_proxy is None


def test_legacy_proxy_string(tmp_path: Path) -> None:
    text = '[kbc]\nname = "offline_fs_kbc"\n[image]\nimage_pull_proxy = "http://p:1"\nskip_proxy_ips = "10.0.0.1"\n'
    c = load_config(cfg_file(tmp_path, text), cmdline="", env={})
    assert c.image.image_pull_proxy == ProxyConfig(https_proxy="http://p:1", no_proxy=("10.0.0.1",))
    assert c.unknown_keys == ()


def test_unknown_keys_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = '[kbc]\nname = "offline_fs_kbc"\nulr = "x"\n[image]\nwork_dri = "/x"\n[image.nydus]\nx = 1\n'
    with caplog.at_level(logging.WARNING, logger="cdh.config"):
        c = load_config(cfg_file(tmp_path, text), cmdline="", env={})
    assert set(c.unknown_keys) == {"kbc.ulr", "image.work_dri"}
    assert "kbc.ulr" in caplog.text and "image.work_dri" in caplog.text
    assert "nydus" in caplog.text  # legacy section: accepted, ignored, said so


def test_registry_config_is_image_pulls_own_with_unknown_keys_reported(tmp_path: Path) -> None:
    """[image.registry_config] becomes image_pull's RegistryConfig (its rules, its insecure
    hosts: a prefix-only entry's location is its prefix); misspelt keys at any depth are
    reported with their dotted path, not silently dropped."""
    text = (
        '[kbc]\nname = "offline_fs_kbc"\n[image.registry_config]\n'
        '[[image.registry_config.registry]]\nprefix = "a.example:5000/ns"\ninsecure = true\nmirorr = 1\n'
        '[[image.registry_config.registry.mirror]]\nlocation = "m.example"\ninsecrue = true\n'
    )
    c = load_config(cfg_file(tmp_path, text), cmdline="", env={})
    rc = c.image.registry_config
    assert rc is not None and rc.unqualified_search_registries == ()
    assert rc.insecure_hosts() == {"a.example:5000"}  # the mirror's "insecrue" is not "insecure"
    assert c.unknown_keys == (
        "image.registry_config.registry[0].mirorr",
        "image.registry_config.registry[0].mirror[0].insecrue",
    )
    bad = '[kbc]\nname = "offline_fs_kbc"\n[image.registry_config]\n[[image.registry_config.registry]]\n'
    with pytest.raises(CdhConfigError, match=r"image\.registry_config: .*needs a prefix or a location"):
        load_config(cfg_file(tmp_path, bad), cmdline="", env={})


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ('socket = "x"\n', r"\[kbc\]"),
        ("[kbc]\nname = 3\n", "must be a string"),
        (
            '[kbc]\nname = "offline_fs_kbc"\n[image]\nmax_concurrent_layer_downloads_per_image = 0\n',
            "positive",
        ),
        ("[kbc\n", "not valid TOML"),
        ('[kbc]\nname = "offline_fs_kbc"\n[image]\npull_timeout = 0\n', "pull_timeout"),
        ('[kbc]\nname = "offline_fs_kbc"\n[image]\npull_timeout = "1h"\n', "pull_timeout"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(CdhConfigError, match=msg):
        load_config(cfg_file(tmp_path, text), cmdline="", env={})


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/run/confidential-containers/cdh/kbs/../../../etc/shadow",
        "/run/confidential-containers/cdh/kbs/./x",
        "run/confidential-containers/cdh/kbs/x",
        "/run/confidential-containers/cdh/kbsx/y",
        "/run/confidential-containers/cdh/kbs",
        "/run/confidential-containers/cdh/kbs/x\x00y",  # would be a ValueError at write time
        "/run/confidential-containers/cdh/kbs/x\ny",
    ],
)
def test_credential_path_escape(tmp_path: Path, path: str) -> None:
    with pytest.raises(CdhConfigError):
        check_credential_path(path)
    text = (
        f'[kbc]\nname = "offline_fs_kbc"\n[[credentials]]\nresource_uri = "kbs:///a/b/c"\npath = "{path}"\n'
    )
    with pytest.raises(CdhConfigError):
        load_config(cfg_file(tmp_path, text), cmdline="", env={})


def test_kernel_cmdline_only() -> None:
    cmdline = (
        "console=ttyS0 quiet agent.aa_kbc_params=cc_kbc::http://10.0.0.2:8080 "
        "agent.image_registry_auth=kbs:///default/credential/test agent.enable_signature_verification=true "
        "agent.image_policy_file=kbs:///default/policy/test agent.https_proxy=http://proxy:3128 "
        "agent.no_proxy=localhost cdh.kbs_resources=kbs:///a/b/c::/run/confidential-containers/cdh/kbs/c,"
        "kbs:///d/e/f::/run/confidential-containers/cdh/kbs/f"
    )
    c = load_config(None, cmdline=cmdline, env={})
    assert c.source == "kernel" and (c.kbc.name, c.kbc.url) == ("cc_kbc", "http://10.0.0.2:8080")
    assert c.image.authenticated_registry_credentials_uri == "kbs:///default/credential/test"
    assert c.image.image_security_policy_uri == "kbs:///default/policy/test"
    assert c.image.image_pull_proxy == ProxyConfig(https_proxy="http://proxy:3128", no_proxy=("localhost",))
    assert [x.resource_uri for x in c.credentials] == ["kbs:///a/b/c", "kbs:///d/e/f"]


def test_policy_needs_signature_verification_flag() -> None:
    c = load_config(None, cmdline="agent.image_policy_file=kbs:///p/o/l", env={})
    assert c.image.image_security_policy_uri is None
    assert c.kbc.name == "offline_fs_kbc"  # no aa_kbc_params: upstream default


def test_cmdline_read_from_injected_path(tmp_path: Path) -> None:
    p = tmp_path / "cmdline"
    p.write_text("agent.aa_kbc_params=cc_kbc::http://k:1\n")
    assert load_config(None, cmdline_path=p, env={}).kbc.url == "http://k:1"


def test_cmdline_image_used_only_without_image_section(tmp_path: Path) -> None:
    cmd = "agent.image_registry_auth=kbs:///x/y/z"
    without = load_config(cfg_file(tmp_path, '[kbc]\nname = "offline_fs_kbc"\n'), cmdline=cmd, env={})
    assert without.image.authenticated_registry_credentials_uri == "kbs:///x/y/z"
    with_img = load_config(
        cfg_file(tmp_path, '[kbc]\nname = "offline_fs_kbc"\n[image]\nwork_dir = "/w"\n'), cmdline=cmd, env={}
    )
    assert with_img.image.authenticated_registry_credentials_uri is None


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "AA_KBC_PARAMS": "cc_kbc::http://from-env:1",
        "CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS": "kbs:///env/auth/json",
    }
    c = load_config(cfg_file(tmp_path, FULL), cmdline="", env=env)
    assert c.kbc.url == "http://from-env:1" and c.kbc.kbs_cert == "-----BEGIN CERTIFICATE-----"
    assert c.image.authenticated_registry_credentials_uri == "kbs:///env/auth/json"


def test_parse_kernel_cmdline() -> None:
    assert parse_kernel_cmdline("a=1 b c=x=y a=2") == {"a": "2", "b": "", "c": "x=y"}


def test_kbc_name_and_url_are_checked_later_not_at_load(tmp_path: Path) -> None:
    """As upstream: the config loads; the hub (unknown name) or the first
    request (empty cc_kbc URL) fails, see test_cli.py."""
    c = load_config(cfg_file(tmp_path, '[kbc]\nname = "cc_kbc"\n'), cmdline="", env={})
    assert (c.kbc.name, c.kbc.url) == ("cc_kbc", "")
    c = load_config(cfg_file(tmp_path, '[kbc]\nname = "foo_kbc"\n'), cmdline="", env={})
    assert c.kbc.name == "foo_kbc"
    assert load_config(None, cmdline="agent.aa_kbc_params=foo_kbc::x", env={}).kbc.name == "foo_kbc"


def test_duplicate_kernel_params_first_or_last_as_upstream() -> None:
    """agent.aa_kbc_params and cdh.kbs_resources: the first occurrence (upstream
    `find`); image parameters: the last (upstream collects them in a map)."""
    kbs = "/run/confidential-containers/cdh/kbs"
    cmdline = (
        "agent.aa_kbc_params agent.aa_kbc_params=cc_kbc::http://first:1 agent.aa_kbc_params=cc_kbc::http://second:2 "
        f"cdh.kbs_resources=kbs:///a/b/first::{kbs}/first cdh.kbs_resources=kbs:///a/b/second::{kbs}/second "
        "agent.image_registry_auth=kbs:///x/y/first agent.image_registry_auth=kbs:///x/y/last"
    )
    c = load_config(None, cmdline=cmdline, env={})
    assert c.kbc.url == "http://first:1"
    assert [x.resource_uri for x in c.credentials] == ["kbs:///a/b/first"]
    assert c.image.authenticated_registry_credentials_uri == "kbs:///x/y/last"
    params = parse_kernel_cmdline(cmdline)
    assert params["agent.aa_kbc_params"] == "cc_kbc::http://first:1"


def test_malformed_kbs_resources_items_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    kbs = "/run/confidential-containers/cdh/kbs"
    cmdline = f"cdh.kbs_resources=garbage,kbs:///a/b/c::{kbs}/c,,also-garbage:/x,kbs:///d/e/f::{kbs}/f"
    with caplog.at_level(logging.WARNING, logger="cdh.config"):
        c = load_config(None, cmdline=cmdline, env={})
    assert [(x.resource_uri, str(x.path)) for x in c.credentials] == [
        ("kbs:///a/b/c", f"{kbs}/c"),
        ("kbs:///d/e/f", f"{kbs}/f"),
    ]
    assert "garbage" in caplog.text and "also-garbage" in caplog.text
    # an item with '::' is used, so a path outside the credentials directory still stops the start
    with pytest.raises(CdhConfigError, match="not under"):
        load_config(None, cmdline="cdh.kbs_resources=kbs:///a/b/c::/etc/passwd", env={})


def test_export_environment_keeps_a_preset_aa_socket(tmp_path: Path) -> None:
    c = load_config(cfg_file(tmp_path, FULL), cmdline="", env={})
    env = {"AA_SOCKET": "unix:///preset/aa.sock", "OCICRYPT_KEYPROVIDER_CONFIG": "/x"}
    export_environment(c, env)
    assert env["AA_SOCKET"] == "unix:///preset/aa.sock"
    env2 = {"OCICRYPT_KEYPROVIDER_CONFIG": "/x"}
    export_environment(c, env2)
    assert env2["AA_SOCKET"] == "unix:///tmp/x/aa.sock"


def test_export_environment_writes_ocicrypt_config(tmp_path: Path) -> None:
    text = (
        'socket = "unix:///tmp/c.sock"\nskip_sealed_secret_verification = true\n'
        '[kbc]\nname = "cc_kbc"\nurl = "http://k:1"\nkbs_cert = "CERT"\n'
    )
    c = load_config(cfg_file(tmp_path, text), cmdline="", env={})
    env: dict[str, str] = {}
    ocp = tmp_path / "run" / "ocicrypt_config.json"
    export_environment(c, env, ocicrypt_path=ocp)
    assert env["AA_KBC_PARAMS"] == "cc_kbc::http://k:1"
    assert env["AA_SOCKET"] == DEFAULT_AA_SOCKET and env["KBS_CERT"] == "CERT"
    assert env["SKIP_SEALED_SECRET_VERIFICATION"] == "true"
    assert env["OCICRYPT_KEYPROVIDER_CONFIG"] == str(ocp)
    assert json.loads(ocp.read_text()) == {
        "key-providers": {"attestation-agent": {"ttrpc": "unix:///tmp/c.sock"}}
    }
    env2 = {"OCICRYPT_KEYPROVIDER_CONFIG": "/etc/ocicrypt.json", "AA_KBC_PARAMS": "pre::set"}
    export_environment(c, env2, ocicrypt_path=tmp_path / "other.json")
    assert env2["OCICRYPT_KEYPROVIDER_CONFIG"] == "/etc/ocicrypt.json" and env2["AA_KBC_PARAMS"] == "pre::set"
    assert not (tmp_path / "other.json").exists()


def test_skip_verification_is_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = 'skip_sealed_secret_verification = true\n[kbc]\nname = "offline_fs_kbc"\n'
    with caplog.at_level(logging.WARNING):
        c = load_config(cfg_file(tmp_path, text), cmdline="", env={"SKIP_SEALED_SECRET_VERIFICATION": "true"})
    assert c.skip_sealed_secret_verification and "INSECURE" in caplog.text
    # the environment alone never turns verification off
    c2 = load_config(
        cfg_file(tmp_path, '[kbc]\nname = "offline_fs_kbc"\n'),
        cmdline="",
        env={"SKIP_SEALED_SECRET_VERIFICATION": "true"},
    )
    assert not c2.skip_sealed_secret_verification


def test_pull_timeout_defaults_and_is_configurable(tmp_path: Path) -> None:
    c = load_config(cfg_file(tmp_path, '[kbc]\nname = "offline_fs_kbc"\n'), cmdline="", env={})
    assert c.image.pull_timeout == 1800.0
    text = '[kbc]\nname = "offline_fs_kbc"\n[image]\npull_timeout = 90\n'
    assert load_config(cfg_file(tmp_path, text), cmdline="", env={}).image.pull_timeout == 90.0
