"""The ``tpm`` attester: a TPM 2.0 quote by a persistent attestation key.

Evidence is guest-components' ``tpm`` shape::

    {"ak_public": b64(DER SubjectPublicKeyInfo),
     "tpm_quote": {"signature": b64(TPMT_SIGNATURE), "message": b64(TPMS_ATTEST),
                   "pcrs": [hex PCR0 .. PCR23 (SHA-256)]},
     "event_log": b64(TCG2 event log)}        # only when one is readable

The nonce is the report data truncated or zero-padded to 32 bytes (as
upstream). ``event_log`` is an addition trustee's verifier ignores; ours
replays it against the quoted PCRs. The init-data digest is extended into
PCR 8.

Configuration follows guest-components: ``AA_TPM_DEVICE`` (default: the
first of /dev/tpmrm0, /dev/tpm0) and ``AA_TPM_AK_HANDLE`` (hex, default
0x81010002); a ``unix:``/``tcp:`` address reaches a swtpm socket instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation._binding import resize
from attestation.tpm.device import Tpm, open_tpm
from attestation.tpm.errors import TpmCommandError, TpmUnavailable
from attestation.tpm.quote import INIT_DATA_PCR
from attestation.tpm.structures import ALG_ECDSA, ALG_RSASSA, ALG_SHA256, PcrSelection, parse_attest
from coco_common.b64 import b64_encode

__all__ = [
    "DEFAULT_AK_HANDLE",
    "DEFAULT_EVENT_LOG",
    "TpmAttester",
    "detect_tpm_device",
    "quote_all_pcrs",
]

DEFAULT_AK_HANDLE = 0x81010002
DEFAULT_EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
_REPORT_DATA_SIZE = 32
_MAX_EVENT_LOG = 4 * 1024 * 1024
ALL_PCRS = PcrSelection(ALG_SHA256, tuple(range(24)))


def detect_tpm_device(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    dev = env.get("AA_TPM_DEVICE")
    if dev:
        return dev if dev.startswith(("unix:", "tcp:")) or Path(dev).exists() else None
    for cand in ("/dev/tpmrm0", "/dev/tpm0"):
        if Path(cand).exists():
            return cand
    return None


def quote_all_pcrs(
    tpm: Tpm, ak_handle: int, nonce: bytes, scheme: tuple[int, int] | None
) -> tuple[bytes, bytes, list[bytes]]:
    """Quote the 24 SHA-256 PCRs and read their values; re-quote (at most 3
    times) if a PCR changed between the two, so values and digest agree."""
    for _ in range(3):
        message, signature = tpm.quote(ak_handle, nonce, ALL_PCRS, scheme)
        values = tpm.pcr_read(ALG_SHA256, ALL_PCRS.indices)
        pcrs = [values[i] for i in ALL_PCRS.indices]
        if hashlib.sha256(b"".join(pcrs)).digest() == parse_attest(message).pcr_digest:
            return message, signature, pcrs
    raise TpmCommandError("PCRs kept changing while quoting")


class TpmAttester:
    tee = "tpm"

    def __init__(
        self,
        device: str | None = None,
        *,
        ak_handle: int | None = None,
        event_log: str | None = DEFAULT_EVENT_LOG,
    ) -> None:
        dev = device or detect_tpm_device()
        if dev is None:
            raise TpmUnavailable("no TPM device (set AA_TPM_DEVICE)")
        self.device = dev
        if ak_handle is None:
            raw = os.environ.get("AA_TPM_AK_HANDLE")
            try:
                ak_handle = int(raw.removeprefix("0x"), 16) if raw else DEFAULT_AK_HANDLE
            except ValueError as exc:
                raise TpmUnavailable(f"AA_TPM_AK_HANDLE {str(raw)[:20]!r} is not hex") from exc
        self.ak_handle = ak_handle
        self.event_log = event_log

    def _evidence(self, report_data: bytes) -> dict[str, Any]:
        nonce = resize(report_data, _REPORT_DATA_SIZE)
        with open_tpm(self.device) as tpm:
            pub = tpm.read_public(self.ak_handle)
            scheme = (
                (ALG_RSASSA, ALG_SHA256)
                if isinstance(pub.public_key, rsa.RSAPublicKey)
                else (ALG_ECDSA, ALG_SHA256)
            )
            message, signature, pcrs = quote_all_pcrs(tpm, self.ak_handle, nonce, scheme)
        spki = pub.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ev: dict[str, Any] = {
            "ak_public": b64_encode(spki),
            "tpm_quote": {
                "signature": b64_encode(signature),
                "message": b64_encode(message),
                "pcrs": [p.hex() for p in pcrs],
            },
        }
        if self.event_log:
            try:
                with open(self.event_log, "rb") as f:
                    log = f.read(_MAX_EVENT_LOG + 1)
            except OSError:
                log = b""
            if log and len(log) <= _MAX_EVENT_LOG:
                ev["event_log"] = b64_encode(log)
        return ev

    async def get_evidence(self, report_data: bytes) -> Any:
        return await asyncio.to_thread(self._evidence, report_data)

    def _extend(self, digest: bytes, index: int) -> None:
        if len(digest) != 32:
            raise TpmCommandError("TPM PCR extends need a SHA-256 (32-byte) digest")
        with open_tpm(self.device) as tpm:
            tpm.pcr_extend(index, digest)

    async def bind_init_data(self, digest: bytes) -> None:
        """Extend PCR 8 with the init-data digest (guest-components' binding)."""
        await asyncio.to_thread(self._extend, digest, INIT_DATA_PCR)

    async def extend_runtime_measurement(self, digest: bytes, index: int) -> None:
        await asyncio.to_thread(self._extend, digest, index)
