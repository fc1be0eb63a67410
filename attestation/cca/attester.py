"""The ``cca`` attester: a CCA attestation token from configfs-tsm (provider
``arm_cca_guest``), the challenge being the report data zero-padded to 64
bytes. Evidence is guest-components' ``{"token": [bytes]}``.

The init-data digest is bound by the host through the realm personalization
value at launch; there is nothing to extend at runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from attestation.cca.errors import CcaDeviceUnavailable, CcaError
from attestation.cca.token import MAX_TOKEN_SIZE
from attestation.snp.device import TSM_REPORT_ROOT, ConfigfsOps, OsConfigfs

__all__ = ["CcaAttester"]

_SMALL = 64
_PROVIDER = b"arm_cca_guest"


class CcaAttester:
    tee = "cca"

    def __init__(self, root: Path = TSM_REPORT_ROOT, ops: ConfigfsOps | None = None) -> None:
        self.root = root
        self.ops: ConfigfsOps = ops if ops is not None else OsConfigfs()

    def _generation(self, entry: Path) -> int:
        text = self.ops.read(entry / "generation", _SMALL).strip()
        if not text.isdigit():
            raise CcaDeviceUnavailable("configfs-tsm generation is not a number")
        return int(text)

    def _token(self, report_data: bytes) -> bytes:
        if len(report_data) > 64:
            raise CcaError("CCA challenge is at most 64 bytes")
        try:
            entry = self.ops.make_entry(self.root)
        except OSError as exc:
            raise CcaDeviceUnavailable(f"cannot create a configfs-tsm report object: {exc.strerror}") from exc
        try:
            provider = self.ops.read(entry / "provider", _SMALL).strip()
            if provider != _PROVIDER:
                raise CcaDeviceUnavailable(
                    f"configfs-tsm provider is {provider.decode('ascii', 'replace')!r}, not arm_cca_guest"
                )
            before = self._generation(entry)
            self.ops.write(entry / "inblob", report_data.ljust(64, b"\x00"))
            token = self.ops.read(entry / "outblob", MAX_TOKEN_SIZE)
            if self._generation(entry) != before + 1:
                raise CcaDeviceUnavailable("configfs-tsm report object changed under us (concurrent writer)")
            if not token:
                raise CcaDeviceUnavailable("configfs-tsm returned an empty CCA token")
            return token
        except OSError as exc:
            raise CcaDeviceUnavailable(f"configfs-tsm report failed: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                self.ops.remove_entry(entry)

    async def get_evidence(self, report_data: bytes) -> Any:
        token = await asyncio.to_thread(self._token, report_data)
        return {"token": list(token)}

    async def bind_init_data(self, digest: bytes) -> None:
        raise CcaDeviceUnavailable("CCA binds init-data through the realm personalization value at launch")
