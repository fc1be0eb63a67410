"""The Vault / OpenBao KV v1 resource backend against a real OpenBao server (dev mode, TLS,
on 127.0.0.1): trustee's layout, both value spellings, typed failures, no token in errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kbs.errors import StorageError
from kbs.vault_kv import VaultKvBackend, VaultKvConfig, parse_vault_config
from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_client.sample import SampleEvidenceSource
from kbs_protocol.uri import ResourceUri
from tests.support.kbs import start_kbs
from tests.support.openbao import OpenBao, openbao

__all__ = ["openbao"]  # re-exported fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def bao(openbao: OpenBao) -> OpenBao:
    return openbao


def _cfg(bao: OpenBao, **over: object) -> VaultKvConfig:
    opts: dict[str, object] = {
        "storage_backend_type": "Vault",
        "vault_url": bao.url,
        "token": bao.token,
        "mount_path": "kv",
        "verify_ssl": True,
        "ca_certs": [str(bao.ca)],
    }
    opts.update(over)
    return parse_vault_config(opts, ValueError)


async def test_round_trip_in_trustees_layout(bao: OpenBao) -> None:
    vault = VaultKvBackend(_cfg(bao))
    try:
        value = bytes(range(256)) + b"\x00tail"
        await vault.set("default/key/k1", value)
        assert await vault.get("default/key/k1") == value
        # what trustee writes and reads: kv/<repo>/<type>/<tag>, key "data", a JSON byte array
        status, body = bao.call("GET", "kv/default/key/k1")
        assert status == 200 and json.loads(body)["data"] == {"data": list(value)}
        assert await vault.delete("default/key/k1") is True
        assert await vault.get("default/key/k1") is None
        assert await vault.delete("default/key/k1") is False
    finally:
        await vault.close()


async def test_a_value_put_with_the_cli_is_a_string(bao: OpenBao) -> None:
    # `bao kv put kv/prod/secret/db data=hunter2` stores a JSON string
    assert bao.call("POST", "kv/prod/secret/db", b'{"data": "hunter2"}')[0] == 204
    assert bao.call("POST", "kv/prod/secret/nodata", b'{"value": "x", "other": 1}')[0] == 204
    vault = VaultKvBackend(_cfg(bao))
    try:
        assert await vault.get("prod/secret/db") == b"hunter2"
        with pytest.raises(StorageError, match=r"has no 'data' key \(it has: other, value\)"):
            await vault.get("prod/secret/nodata")
    finally:
        await vault.close()


async def test_a_wrong_token_is_a_storage_error_without_the_token(bao: OpenBao) -> None:
    vault = VaultKvBackend(_cfg(bao, token="s.wrong-token-value"))
    try:
        with pytest.raises(StorageError) as info:
            await vault.get("default/key/k1")
        assert "HTTP 403" in str(info.value)
        assert "wrong-token" not in str(info.value) and bao.token not in str(info.value)
        with pytest.raises(StorageError, match="refused writing"):
            await vault.set("default/key/k1", b"x")
    finally:
        await vault.close()


async def test_tls_is_verified_by_default(bao: OpenBao, caplog: pytest.LogCaptureFixture) -> None:
    # no ca_certs: the dev server's self-made CA is unknown, so the connection is refused
    vault = VaultKvBackend(_cfg(bao, ca_certs=[]))
    try:
        with pytest.raises(StorageError, match="cannot be reached: ConnectError"):
            await vault.get("default/key/k1")
    finally:
        await vault.close()
    # verify_ssl = false works (as trustee's default) but is said loudly
    with caplog.at_level(logging.WARNING, logger="kbs.vault"):
        vault = VaultKvBackend(_cfg(bao, verify_ssl=False, ca_certs=[]))
    try:
        assert await vault.get("default/key/absent") is None
    finally:
        await vault.close()
    assert any("INSECURE: plugins.resource.verify_ssl = false" in r.getMessage() for r in caplog.records)


async def test_segments_cannot_walk_out_of_the_mount(bao: OpenBao) -> None:
    assert bao.call("POST", "kv/a/b/c", b'{"data": "inside"}')[0] == 204
    vault = VaultKvBackend(_cfg(bao))
    try:
        await vault.set("x/../..%2Fsys/y", b"v")  # quoted: one odd secret name, not a path walk
        assert await vault.get("x/../..%2Fsys/y") == b"v"
        assert await vault.get("a/b/c") == b"inside"
    finally:
        await vault.close()


def test_config_is_checked_like_trustees(tmp_path: Path) -> None:
    base = {"vault_url": "https://v:8200", "token": "t"}
    cfg = parse_vault_config(base, ValueError)
    assert (cfg.mount_path, cfg.verify_ssl, cfg.ca_certs) == ("secret", True, ())
    assert "token='t'" not in repr(cfg)
    for bad, msg in [
        ({"token": "t"}, "vault_url is required"),
        ({"vault_url": "https://v"}, "token is required"),
        ({**base, "vault_url": "ftp://v"}, "must be an http:// or https:// URL"),
        ({**base, "verify_ssl": "no"}, "verify_ssl must be true or false"),
        ({**base, "ca_certs": "/x.pem"}, "ca_certs must be a list"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_vault_config(bad, ValueError)
    assert (
        parse_vault_config({**base, "vault_url": "http://v"}, ValueError)
        .warnings()[0]
        .startswith("INSECURE: plugins.resource.vault_url http://v is plain http")
    )


async def test_a_kbs_keeps_its_resources_in_vault(bao: OpenBao, tmp_path: Path) -> None:
    """trustee's own plugin table, a KBS process, the admin API and an attested client:
    the resource is written to and read from OpenBao, never the KBS's local store."""
    plugin = f"""
[[plugins]]
name = "resource"
storage_backend_type = "Vault"
vault_url = "{bao.url}"
token = "{bao.token}"
mount_path = "kv"
verify_ssl = true
ca_certs = ["{bao.ca}"]
"""
    with start_kbs(
        tmp_path / "kbs", extra_toml=plugin, resources={"default/key/vaulted": b"from-vault"}
    ) as kbs:
        status, body = bao.call("GET", "kv/default/key/vaulted")
        assert status == 200 and json.loads(body)["data"]["data"] == list(b"from-vault")
        assert not [p for p in kbs.storage_dir.rglob("*") if "vaulted" in p.name]  # nothing local
        # a value an operator put straight into Vault is served too
        assert bao.call("POST", "kv/default/key/cli", b'{"data": "put-with-bao"}')[0] == 204
        async with httpx.AsyncClient(timeout=30) as http:
            att = await attest(http, kbs.url, SampleEvidenceSource(), attempts=1)
            for path, want in [("default/key/vaulted", b"from-vault"), ("default/key/cli", b"put-with-bao")]:
                uri = ResourceUri.parse(f"kbs:///{path}")
                assert await get_resource(http, kbs.url, uri, token=att.token, key=att.key) == want
        kbs.delete_resource("default/key/vaulted")
        assert bao.call("GET", "kv/default/key/vaulted")[0] == 404
        log = kbs.log_text()
        assert bao.token not in log
        # kbs --check shows the backend, with the token redacted
        out = subprocess.run(
            [sys.executable, "-m", "kbs.cli", "--config-file", str(kbs.config_path), "--check"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert bao.token not in out.stdout + out.stderr
        assert '"storage_backend_type": "Vault"' in out.stdout and "<redacted>" in out.stdout


async def test_delete_asks_for_existence_by_status_only(bao: OpenBao) -> None:
    """A secret an operator put without a 'data' key (unreadable as a resource) can still be
    deleted: delete looks at the status of the read, never at the value."""
    assert bao.call("POST", "kv/prod/secret/odd", b'{"value": "x"}')[0] == 204
    vault = VaultKvBackend(_cfg(bao))
    try:
        assert await vault.delete("prod/secret/odd") is True
        assert bao.call("GET", "kv/prod/secret/odd")[0] == 404
        assert await vault.delete("prod/secret/odd") is False
    finally:
        await vault.close()
    # a refused read is a refused delete, not "not found"
    vault = VaultKvBackend(_cfg(bao, token="s.wrong-token-value"))
    try:
        with pytest.raises(StorageError, match="HTTP 403"):
            await vault.delete("default/key/k1")
    finally:
        await vault.close()


async def test_insecure_settings_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The config check lists the warning (for --check) and the backend logs it, once."""
    from kbs.config import parse_config
    from kbs.resource_store import open_resources
    from kbs.storage import MemoryStore

    plugin = {"name": "resource", "storage_backend_type": "Vault", "vault_url": "https://127.0.0.1:9"}
    doc = {"http_server": {"insecure_http": True}, "admin": {"authorization_mode": "DenyAll"}}
    doc["plugins"] = [{**plugin, "token": "t", "verify_ssl": False}]
    with caplog.at_level(logging.WARNING):
        cfg = parse_config(doc)
        backend = open_resources(cfg, MemoryStore())
    await backend.close()
    said = [r for r in caplog.records if "INSECURE: plugins.resource.verify_ssl = false" in r.getMessage()]
    assert len(said) == 1
    assert [w for w in cfg.warnings if w.startswith("INSECURE: plugins.resource.verify_ssl")]
