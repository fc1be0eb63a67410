"""Where the resource plugin keeps resources: the KBS's own store (trustee's
``storage_backend_type = "kvstorage"``, the default: the ``repository`` namespace of
whatever ``[storage_backend]`` names) or a Vault / OpenBao KV v1 mount
(``"Vault"``, :mod:`kbs.vault_kv`). Keys are ``<repository>/<type>/<tag>``, checked
by the server before they get here."""

from __future__ import annotations

from typing import Protocol

from .config import KbsServerConfig
from .errors import KbsConfigError
from .storage import NS_REPOSITORY, KvStore
from .vault_kv import VaultKvBackend, parse_vault_config

__all__ = ["KvResources", "ResourceStore", "open_resources"]


class ResourceStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> bool:
        """True when there was a resource to delete."""
        ...

    async def close(self) -> None: ...


class KvResources:
    """Resources in the ``repository`` namespace of the KBS's store (closed with the store)."""

    def __init__(self, store: KvStore) -> None:
        self._store = store

    async def get(self, key: str) -> bytes | None:
        return await self._store.get(NS_REPOSITORY, key)

    async def set(self, key: str, value: bytes) -> None:
        await self._store.set(NS_REPOSITORY, key, value)

    async def delete(self, key: str) -> bool:
        return await self._store.delete(NS_REPOSITORY, key)

    async def close(self) -> None:
        """The store is the KBS's own and is closed with it."""


def open_resources(cfg: KbsServerConfig, store: KvStore) -> ResourceStore:
    """The resource backend the ``resource`` plugin's config names."""
    for p in cfg.plugin_configs:
        if p.name == "resource" and str(p.options.get("storage_backend_type", "")).lower() == "vault":
            return VaultKvBackend(parse_vault_config(p.options, KbsConfigError))
    return KvResources(store)
