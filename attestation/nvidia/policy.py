"""An optional appraisal policy for verified NVIDIA devices (``--policy FILE``).

The policy is a JSON object; every key is optional and unknown keys are errors::

    {
      "require_measurements_match": true,
      "require_fwid": true,
      "allowed_arch": ["HOPPER", "BLACKWELL"],
      "allowed_driver_versions": ["550.90.07"],
      "min_driver_version": "550.0",
      "allowed_vbios_versions": ["96.00.9f.00.01"],
      "allowed_feature_flags": ["SPT", "PPCIE"]
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attestation.nvidia.errors import NvidiaFormatError, NvidiaPolicyViolation
from attestation.nvidia.verify import VerifiedDevice
from coco_common.strict_json import strict_object

__all__ = ["MAX_POLICY_SIZE", "NvidiaPolicy"]

MAX_POLICY_SIZE = 64 * 1024
_LIST_KEYS = ("allowed_arch", "allowed_driver_versions", "allowed_vbios_versions", "allowed_feature_flags")
_BOOL_KEYS = ("require_measurements_match", "require_fwid")


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError as exc:
        raise NvidiaFormatError(f"not a dotted numeric version: {text!r}") from exc


@dataclass(frozen=True)
class NvidiaPolicy:
    require_measurements_match: bool = False
    require_fwid: bool = False
    allowed_arch: tuple[str, ...] | None = None
    allowed_driver_versions: tuple[str, ...] | None = None
    min_driver_version: str | None = None
    allowed_vbios_versions: tuple[str, ...] | None = None
    allowed_feature_flags: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, untrusted: bytes) -> NvidiaPolicy:
        doc = strict_object(untrusted, limit=MAX_POLICY_SIZE, error=NvidiaFormatError, what="NVIDIA policy")
        unknown = set(doc) - set(_LIST_KEYS) - set(_BOOL_KEYS) - {"min_driver_version"}
        if unknown:
            raise NvidiaFormatError(f"unknown policy keys: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k in _BOOL_KEYS:
            if k in doc:
                if not isinstance(doc[k], bool):
                    raise NvidiaFormatError(f"policy {k} must be true or false")
                kw[k] = doc[k]
        for k in _LIST_KEYS:
            if k in doc:
                v = doc[k]
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise NvidiaFormatError(f"policy {k} must be a list of strings")
                kw[k] = tuple(x.lower() for x in v)
        if "min_driver_version" in doc:
            if not isinstance(doc["min_driver_version"], str):
                raise NvidiaFormatError("policy min_driver_version must be a string")
            _version_tuple(doc["min_driver_version"])
            kw["min_driver_version"] = doc["min_driver_version"]
        return cls(**kw)

    def check(self, devices: Sequence[VerifiedDevice]) -> None:
        """Raise PolicyViolation naming the first device and rule that fails."""
        for i, d in enumerate(devices):
            o = d.report.opaque
            where = f"device {i} ({d.arch})"
            if self.require_measurements_match and d.measurements_match is not True:
                raise NvidiaPolicyViolation(f"{where}: measurements were not compared with RIMs")
            if self.require_fwid and not d.fwid_checked:
                raise NvidiaPolicyViolation(f"{where}: report has no FWID bound to its certificate")
            if self.allowed_arch is not None and d.arch.lower() not in self.allowed_arch:
                raise NvidiaPolicyViolation(f"{where}: architecture not allowed")
            drv = o.driver_version
            if (
                self.allowed_driver_versions is not None
                and (drv or "").lower() not in self.allowed_driver_versions
            ):
                raise NvidiaPolicyViolation(f"{where}: driver {drv} not allowed")
            if self.min_driver_version is not None and (
                drv is None or _version_tuple(drv) < _version_tuple(self.min_driver_version)
            ):
                raise NvidiaPolicyViolation(f"{where}: driver {drv} older than {self.min_driver_version}")
            vb = o.vbios_version
            if (
                self.allowed_vbios_versions is not None
                and (vb or "").lower() not in self.allowed_vbios_versions
            ):
                raise NvidiaPolicyViolation(f"{where}: VBIOS {vb} not allowed")
            ff = o.feature_flag
            if (
                self.allowed_feature_flags is not None
                and (ff or "").lower() not in self.allowed_feature_flags
            ):
                raise NvidiaPolicyViolation(f"{where}: feature flag {ff} not allowed")
