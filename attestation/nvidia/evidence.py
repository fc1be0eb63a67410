"""NVIDIA evidence JSON shapes, parsed strictly.

* guest-components / trustee: ``{"device_evidence_list": [{"arch", "uuid",
  "evidence", "certificate"}]}`` with ``evidence`` the raw report in standard
  base64 (older attesters: hex) and ``certificate`` the base64 of the PEM chain.
* NVIDIA SDK / PPCIE serialized evidence: a list of ``{"arch", "certificate",
  "evidence", "nonce", ["driver_version", "vbios_version", "version"]}``.

Unknown keys, duplicate keys and wrong types are errors.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation._binding import resize
from attestation.nvidia.certs import MAX_CHAIN_SIZE
from attestation.nvidia.errors import NvidiaFormatError
from attestation.nvidia.spdm import MAX_REPORT_SIZE, NONCE_SIZE
from coco_common.b64 import b64_decode
from coco_common.strict_json import strict_loads

__all__ = [
    "MAX_DEVICES",
    "MAX_EVIDENCE_JSON_SIZE",
    "DeviceEvidence",
    "decode_report_text",
    "device_nonce",
    "encode_evidence",
    "parse_evidence",
]

MAX_DEVICES = 64
#: Enough for MAX_DEVICES reports and chains in base64.
MAX_EVIDENCE_JSON_SIZE = 4 * 1024 * 1024
_ARCHES = {"HOPPER", "BLACKWELL", "LS10"}
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


@dataclass(frozen=True)
class DeviceEvidence:
    """One device's untrusted evidence as received."""

    arch: str
    uuid: str | None
    report: bytes
    cert_chain_pem: bytes
    #: Only in the NVIDIA SDK shape: the nonce the collector says it used (not trusted).
    nonce: bytes | None = None


def device_nonce(report_data: bytes) -> bytes:
    """The 32-byte device nonce: the first 32 bytes of the report data, zero-padded
    (guest-components' attester and trustee's verifier both do this)."""
    return resize(report_data, NONCE_SIZE)


def decode_report_text(untrusted: str) -> bytes:
    """A report given as hex (any whitespace ignored) or standard base64."""
    text = "".join(untrusted.split())
    if len(text) > 2 * MAX_REPORT_SIZE + 64:
        raise NvidiaFormatError(f"report is larger than {MAX_REPORT_SIZE} bytes")
    if _HEX.match(text) and text[:4].lower() == "11e0":
        return bytes.fromhex(text)
    try:
        return b64_decode(text)
    except ValueError as exc:
        raise NvidiaFormatError("report is neither hex nor base64") from exc


def _str(obj: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None and not required and key not in obj:
        return None
    if not isinstance(v, str):
        raise NvidiaFormatError(f"evidence field {key!r} must be a string")
    return v


def _cert_chain(text: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        pem = stripped.encode()
    else:
        try:
            pem = b64_decode("".join(stripped.split()))
        except ValueError as exc:
            raise NvidiaFormatError("certificate field is neither PEM nor base64 of PEM") from exc
    if len(pem) > MAX_CHAIN_SIZE:
        raise NvidiaFormatError("certificate chain is too large")
    return pem


def _arch(value: str) -> str:
    arch = value.upper()
    if arch not in _ARCHES:
        raise NvidiaFormatError(f"unknown device architecture {value!r}")
    return arch


def _device_gc(item: Any) -> DeviceEvidence:
    if not isinstance(item, dict):
        raise NvidiaFormatError("device_evidence_list entries must be objects")
    extra = set(item) - {"arch", "uuid", "evidence", "certificate"}
    if extra:
        raise NvidiaFormatError(f"unknown device evidence keys: {sorted(extra)}")
    return DeviceEvidence(
        arch=_arch(str(_str(item, "arch"))),
        uuid=_str(item, "uuid"),
        report=decode_report_text(str(_str(item, "evidence"))),
        cert_chain_pem=_cert_chain(str(_str(item, "certificate"))),
    )


def _device_sdk(item: Any) -> DeviceEvidence:
    if not isinstance(item, dict):
        raise NvidiaFormatError("evidence list entries must be objects")
    extra = set(item) - {
        "arch",
        "certificate",
        "evidence",
        "nonce",
        "driver_version",
        "vbios_version",
        "version",
    }
    if extra:
        raise NvidiaFormatError(f"unknown device evidence keys: {sorted(extra)}")
    for k in ("driver_version", "vbios_version", "version"):
        _str(item, k, required=False)
    nonce_text = _str(item, "nonce", required=False)
    nonce = None
    if nonce_text is not None:
        if not _HEX.match(nonce_text) or len(nonce_text) != 64:
            raise NvidiaFormatError("SDK evidence nonce must be 32 bytes of hex")
        nonce = bytes.fromhex(nonce_text)
    return DeviceEvidence(
        arch=_arch(str(_str(item, "arch"))),
        uuid=None,
        report=decode_report_text(str(_str(item, "evidence"))),
        cert_chain_pem=_cert_chain(str(_str(item, "certificate"))),
        nonce=nonce,
    )


def parse_evidence(untrusted: Any) -> tuple[DeviceEvidence, ...]:
    """Parse either evidence shape (already JSON-decoded, or bytes/str to decode strictly)."""
    if isinstance(untrusted, bytes | str):
        untrusted = strict_loads(
            untrusted, limit=MAX_EVIDENCE_JSON_SIZE, error=NvidiaFormatError, what="NVIDIA evidence"
        )
    if isinstance(untrusted, dict):
        if set(untrusted) != {"device_evidence_list"}:
            raise NvidiaFormatError('NVIDIA evidence must be {"device_evidence_list": [...]}')
        items = untrusted["device_evidence_list"]
        parse = _device_gc
    elif isinstance(untrusted, list):
        items = untrusted
        parse = _device_sdk
    else:
        raise NvidiaFormatError("NVIDIA evidence must be a JSON object or list")
    if not isinstance(items, list) or not items:
        raise NvidiaFormatError("NVIDIA evidence lists no devices")
    if len(items) > MAX_DEVICES:
        raise NvidiaFormatError(f"NVIDIA evidence lists more than {MAX_DEVICES} devices")
    return tuple(parse(i) for i in items)


def encode_evidence(devices: list[DeviceEvidence]) -> dict[str, Any]:
    """The guest-components shape, as the attester sends it."""
    return {
        "device_evidence_list": [
            {
                "arch": d.arch,
                "uuid": d.uuid if d.uuid is not None else "unknown",
                "evidence": base64.b64encode(d.report).decode(),
                "certificate": base64.b64encode(d.cert_chain_pem).decode(),
            }
            for d in devices
        ]
    }
