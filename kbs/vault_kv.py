"""Resources kept in HashiCorp Vault or OpenBao (the KV version 1 secrets engine), as
trustee v0.21's ``storage_backend_type = "Vault"`` resource plugin keeps them.

Layout, identical to trustee's so both KBSes can share one Vault: the resource
``<repository>/<type>/<tag>`` is the secret at ``<mount_path>/<repository>/<type>/<tag>``
whose key ``data`` holds the value. Trustee writes the value as a JSON array of
byte values; a value written with the CLI (``bao kv put ... data=text``) is a JSON
string; both are read back (any other JSON value as its compact JSON text), and
this module writes the byte array as trustee does.

Configuration (``[[plugins]] name = "resource"``), trustee's keys:
``vault_url`` (required), ``token`` (required), ``mount_path`` (default ``secret``),
``verify_ssl``, ``ca_certs`` (PEM files). One deliberate difference: trustee's
``verify_ssl`` defaults to false, ours to true (a KBS should not hand its Vault
token to whoever answers); ``verify_ssl = false`` and a plain ``http://`` URL are
each said loudly at start. The token never appears in a log line or an error.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from coco_common.fields import closest
from coco_common.http import async_client
from coco_common.http_body import HttpBodyError, read_body
from coco_common.strict_json import strict_object
from kbs.errors import StorageError

if TYPE_CHECKING:
    import httpx

__all__ = ["VaultKvBackend", "VaultKvConfig", "parse_vault_config"]

log = logging.getLogger("kbs.vault")

#: the largest answer read from Vault (a resource is bounded by the request limit anyway)
MAX_REPLY_BYTES = 64 * 1024 * 1024 * 4 + 4096  # a JSON byte array takes up to 4 bytes a byte

_KEYS = ("storage_backend_type", "vault_url", "token", "mount_path", "verify_ssl", "ca_certs")


@dataclass(frozen=True)
class VaultKvConfig:
    vault_url: str
    token: str = field(repr=False)
    mount_path: str = "secret"
    verify_ssl: bool = True
    ca_certs: tuple[str, ...] = ()
    #: keys given that the backend does not know (trustee ignores them; we say so)
    unknown: tuple[str, ...] = ()

    def warnings(self) -> list[str]:
        """What is insecure or ignored in this configuration, one line each."""
        out = [
            f"plugins.resource.{k} is not a key of the Vault resource backend: ignored"
            + (f" (did you mean {hint}?)" if (hint := closest(k, _KEYS)) else "")
            for k in self.unknown
        ]
        if urlsplit(self.vault_url).scheme == "http":
            out.append(
                f"INSECURE: plugins.resource.vault_url {self.vault_url} is plain http: "
                "the Vault token and every resource cross the network unencrypted"
            )
        elif not self.verify_ssl:
            out.append(
                "INSECURE: plugins.resource.verify_ssl = false: the Vault server's certificate "
                "is not checked, so anyone on the path can take the Vault token"
            )
        return out


def parse_vault_config(opts: Mapping[str, Any], error: type[Exception]) -> VaultKvConfig:
    """Check trustee's Vault resource-plugin keys; ``error`` names the offending one."""
    w = "plugins.resource"
    for k in ("vault_url", "token"):
        if not isinstance(opts.get(k), str) or not opts[k]:
            raise error(f"{w}.{k} is required for storage_backend_type Vault (a string)")
    url = str(opts["vault_url"]).rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise error(f"{w}.vault_url {url!r} must be an http:// or https:// URL")
    mount = opts.get("mount_path", "secret")
    if not isinstance(mount, str) or not mount.strip("/"):
        raise error(f"{w}.mount_path must be a non-empty string")
    verify = opts.get("verify_ssl", True)
    if not isinstance(verify, bool):
        raise error(f"{w}.verify_ssl must be true or false")
    cas = opts.get("ca_certs") or []
    if not isinstance(cas, list) or not all(isinstance(c, str) for c in cas):
        raise error(f"{w}.ca_certs must be a list of PEM file paths")
    unknown = tuple(k for k in opts if k not in _KEYS and k != "name")
    return VaultKvConfig(url, str(opts["token"]), mount.strip("/"), verify, tuple(cas), unknown)


def _verify(cfg: VaultKvConfig) -> bool | ssl.SSLContext:
    if not cfg.verify_ssl:
        return False
    if not cfg.ca_certs:
        return True
    ctx = ssl.create_default_context()
    for path in cfg.ca_certs:
        ctx.load_verify_locations(cafile=path)
    return ctx


class VaultKvBackend:
    """get / set / delete of resources (``repository/type/tag``) in a KV v1 mount."""

    def __init__(self, cfg: VaultKvConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.cfg = cfg
        self._http = http or async_client(verify=_verify(cfg), timeout=30.0)
        for line in cfg.warnings():
            log.warning("%s", line)

    def _url(self, key: str) -> str:
        # the KBS checked the three segments already; quote anyway so no segment can
        # walk out of the mount
        return f"{self.cfg.vault_url}/v1/{self.cfg.mount_path}/" + "/".join(
            quote(part, safe="") for part in key.split("/")
        )

    async def _call(self, method: str, key: str, body: Any = None) -> httpx.Response:
        import httpx

        try:
            req = self._http.build_request(
                method, self._url(key), json=body, headers={"X-Vault-Token": self.cfg.token}
            )
            resp = await self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            # the exception text names only the URL (no token: it travels in a header)
            raise StorageError(
                f"Vault at {self.cfg.vault_url} cannot be reached: {type(exc).__name__}"
            ) from exc
        return resp

    async def get(self, key: str) -> bytes | None:
        resp = await self._call("GET", key)
        try:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise StorageError(f"Vault refused reading {key}: HTTP {resp.status_code}")
            raw = await read_body(resp, MAX_REPLY_BYTES, what="Vault reply")
        except HttpBodyError as exc:
            raise StorageError(f"Vault reply for {key}: {exc}") from exc
        finally:
            await resp.aclose()
        doc = strict_object(raw, error=StorageError, what=f"Vault reply for {key}")
        data = doc.get("data")
        if not isinstance(data, dict) or "data" not in data:
            keys = sorted(data) if isinstance(data, dict) else []
            raise StorageError(
                f"Vault secret {key} has no 'data' key (it has: {', '.join(keys[:8]) or 'none'})"
            )
        return _value(data["data"], key)

    async def set(self, key: str, value: bytes) -> None:
        resp = await self._call("POST", key, {"data": list(value)})
        await resp.aclose()
        if resp.status_code not in (200, 204):
            raise StorageError(f"Vault refused writing {key}: HTTP {resp.status_code}")

    async def delete(self, key: str) -> bool:
        """True when the secret existed.

        trustee's Vault plugin has no delete (its resource backends only read and
        write); this KBS's admin ``DELETE`` answers "resource not found" for a
        missing resource whatever the backend, and a KV v1 delete answers 204
        either way, so the existence is asked first: by status only, the value is
        neither read nor parsed (a secret with any content can be deleted)."""
        resp = await self._call("GET", key)
        await resp.aclose()
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise StorageError(f"Vault refused reading {key}: HTTP {resp.status_code}")
        resp = await self._call("DELETE", key)
        await resp.aclose()
        if resp.status_code not in (200, 204):
            raise StorageError(f"Vault refused deleting {key}: HTTP {resp.status_code}")
        return True

    async def close(self) -> None:
        await self._http.aclose()


def _value(untrusted: Any, key: str) -> bytes:
    if isinstance(untrusted, str):
        return untrusted.encode("utf-8")
    if isinstance(untrusted, list):
        if all(type(b) is int and 0 <= b < 256 for b in untrusted):
            return bytes(untrusted)
        raise StorageError(f"Vault secret {key}: 'data' is an array but not of byte values")
    # any other JSON value is handed out as its compact JSON text, as trustee does
    return json.dumps(untrusted, separators=(",", ":"), sort_keys=True).encode()
