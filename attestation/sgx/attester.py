"""The ``sgx`` attester inside a Gramine enclave (``/dev/attestation``
pseudo-files: write ``user_report_data``, read ``quote``), as
guest-components' ``sgx_dcap`` attester. Occlum's DCAP ioctl is not
implemented here: an Occlum guest is refused with :class:`UnsupportedPlatform`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from attestation.sgx.errors import SgxError, SgxUnavailable
from coco_common.b64 import b64_encode

__all__ = ["GRAMINE_ATTESTATION_DIR", "SgxAttester", "detect_gramine"]

GRAMINE_ATTESTATION_DIR = Path("/dev/attestation")
_MAX_QUOTE = 64 * 1024


def detect_gramine(root: Path = GRAMINE_ATTESTATION_DIR) -> bool:
    try:
        return (root / "attestation_type").read_text() == "dcap"
    except OSError:
        return False


class SgxAttester:
    tee = "sgx"

    def __init__(self, root: Path = GRAMINE_ATTESTATION_DIR) -> None:
        if os.environ.get("OCCLUM") is not None:
            raise SgxUnavailable("Occlum's DCAP quote ioctl is not implemented (Gramine is)")
        if not detect_gramine(root):
            raise SgxUnavailable(f"no Gramine DCAP attestation interface at {root}")
        self.root = root

    def _evidence(self, report_data: bytes) -> dict[str, Any]:
        if len(report_data) > 64:
            raise SgxError("SGX report data is at most 64 bytes")
        (self.root / "user_report_data").write_bytes(report_data.ljust(64, b"\x00"))
        with open(self.root / "quote", "rb") as f:
            quote = f.read(_MAX_QUOTE + 1)
        if not quote or len(quote) > _MAX_QUOTE:
            raise SgxError("Gramine returned no or an oversized quote")
        return {"quote": b64_encode(quote)}

    async def get_evidence(self, report_data: bytes) -> Any:
        return await asyncio.to_thread(self._evidence, report_data)

    async def bind_init_data(self, digest: bytes) -> None:
        raise SgxUnavailable("SGX CONFIGID is set at enclave launch; nothing to bind at runtime")
