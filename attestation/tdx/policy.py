"""A small appraisal policy for verified TDX claims (``coco-verify tdx --policy``).

Policy JSON (strict: unknown keys, duplicate keys and wrong types are errors)::

    {
      "allow_debug": false,                   # default false
      "require_sept_ve_disable": true,        # default true
      "accepted_tcb_statuses": ["UpToDate"],  # optional; a null status then fails
      "rejected_advisories": ["INTEL-SA-00837"],
      "mr_td": ["<hex>", ...], "mr_seam": [...], "mr_config_id": [...],
      "rtmr0": [...], "rtmr1": [...], "rtmr2": [...], "rtmr3": [...]
    }

Measurement lists are allow-lists: when present, the claim must equal one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attestation.tdx.errors import TdxFormatError, TdxPolicyViolation
from coco_common.cli import closest
from coco_common.fields import Fields
from coco_common.strict_json import strict_object

__all__ = ["MAX_POLICY_SIZE", "TdxPolicy"]

MAX_POLICY_SIZE = 256 * 1024
_MEASUREMENTS = ("mr_td", "mr_seam", "mr_config_id", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


@dataclass(frozen=True)
class TdxPolicy:
    allow_debug: bool = False
    require_sept_ve_disable: bool = True
    accepted_tcb_statuses: tuple[str, ...] | None = None
    rejected_advisories: tuple[str, ...] = ()
    measurements: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_json(cls, untrusted_text: str | bytes) -> TdxPolicy:
        d = strict_object(untrusted_text, limit=MAX_POLICY_SIZE, error=TdxFormatError, what="policy")
        known = {"allow_debug", "require_sept_ve_disable", "accepted_tcb_statuses", "rejected_advisories"}
        unknown = set(d) - known - set(_MEASUREMENTS)
        if unknown:
            allk = sorted(known | set(_MEASUREMENTS))
            hints = [
                f"{k!r} (did you mean {h!r}?)" if (h := closest(k, allk)) else repr(k)
                for k in sorted(unknown)
            ]
            raise TdxFormatError(f"policy: unknown keys {', '.join(hints)}; valid keys: {', '.join(allk)}")
        f = Fields(d, error=TdxFormatError, label="policy")
        meas = tuple(
            (k, tuple(s.lower().removeprefix("0x") for s in v))
            for k in _MEASUREMENTS
            if (v := f.list(k, str)) is not None
        )
        acc = f.list("accepted_tcb_statuses", str)
        return cls(
            allow_debug=bool(f.bool("allow_debug", False)),
            require_sept_ve_disable=bool(f.bool("require_sept_ve_disable", True)),
            accepted_tcb_statuses=tuple(acc) if acc is not None else None,
            rejected_advisories=tuple(f.list("rejected_advisories", str) or ()),
            measurements=meas,
        )

    def check(self, claims: dict[str, Any]) -> None:
        """Raise :class:`~attestation.tdx.errors.TdxPolicyViolation` with the first failed rule."""
        if claims.get("debug") and not self.allow_debug:
            raise TdxPolicyViolation("TD is in DEBUG mode and the policy does not allow debug TDs")
        td_attrs = claims.get("td_attributes") or {}
        if self.require_sept_ve_disable and not td_attrs.get("septve_disable"):
            raise TdxPolicyViolation("SEPT_VE_DISABLE is not set")
        if self.accepted_tcb_statuses is not None:
            status = claims.get("tcb_status")
            if status not in self.accepted_tcb_statuses:
                raise TdxPolicyViolation(
                    f"TCB status {status} is not accepted (give --collateral for a status)"
                )
        for adv in claims.get("advisory_ids") or []:
            if adv in self.rejected_advisories:
                raise TdxPolicyViolation(f"platform is affected by rejected advisory {adv}")
        for key, allowed in self.measurements:
            if str(claims.get(key, "")).lower() not in allowed:
                raise TdxPolicyViolation(f"{key} is not in the policy's allow-list")
