"""Validation of a verified SNP report against an appraisal policy.

Separate from verification: :func:`validate` only runs on a
:class:`~attestation.snp.verify.VerifiedReport`. The policy is a frozen object,
loadable from strict JSON::

    {
      "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "fmc": 0},
      "measurements": ["<96 hex chars>", ...],
      "allow_debug": false,
      "allow_migration_agent": false,
      "vmpl": 0,
      "host_data": "<64 hex chars>",
      "report_data": "<up to 128 hex chars, zero-padded>",
      "min_guest_svn": 0,
      "min_firmware": "1.55",
      "products": ["Milan", "Genoa"],
      "signing_keys": ["vcek"],
      "id_key_digests": ["<96 hex chars>", ...],
      "author_key_digests": ["<96 hex chars>", ...],
      "family_id": "<32 hex chars>",
      "image_id": "<32 hex chars>"
    }

Every key is optional; the defaults forbid debug guests and migration agents
and check nothing else. Unknown keys, duplicate keys and wrong types are
errors.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from attestation.snp.errors import SnpFormatError, SnpPolicyViolation
from attestation.snp.report import Product, SigningKey
from attestation.snp.verify import VerifiedReport, resize
from coco_common.cli import closest
from coco_common.strict_json import strict_object

__all__ = ["MAX_POLICY_FILE", "SnpPolicy", "TcbFloor", "validate"]

#: Upper bound for a policy file.
MAX_POLICY_FILE = 1024 * 1024

_POLICY_KEYS = {
    "min_tcb",
    "measurements",
    "allow_debug",
    "allow_migration_agent",
    "vmpl",
    "host_data",
    "report_data",
    "min_guest_svn",
    "min_firmware",
    "products",
    "signing_keys",
    "id_key_digests",
    "author_key_digests",
    "family_id",
    "image_id",
}


@dataclass(frozen=True)
class TcbFloor:
    """Minimum SVNs; ``fmc`` applies to Turin reports only."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int | None = None


def _hex(v: Any, key: str, max_len: int, exact: int | None = None) -> bytes:
    if not isinstance(v, str):
        raise SnpFormatError(f"policy {key} must be a hex string")
    try:
        b = bytes.fromhex(v)
    except ValueError as exc:
        raise SnpFormatError(f"policy {key} is not hex") from exc
    if len(b) > max_len or (exact is not None and len(b) != exact):
        raise SnpFormatError(f"policy {key} has the wrong length")
    return b


def _uint(v: Any, key: str, bits: int = 8) -> int:
    if type(v) is not int or not 0 <= v < (1 << bits):
        raise SnpFormatError(f"policy {key} must be an unsigned {bits}-bit integer")
    return v


def _bool(v: Any, key: str) -> bool:
    if type(v) is not bool:
        raise SnpFormatError(f"policy {key} must be true or false")
    return v


@dataclass(frozen=True)
class SnpPolicy:
    """What an authentic report must also satisfy."""

    min_tcb: TcbFloor | None = None
    measurements: frozenset[bytes] | None = None
    allow_debug: bool = False
    allow_migration_agent: bool = False
    vmpl: int | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    min_guest_svn: int | None = None
    min_firmware: tuple[int, int] | None = None
    products: frozenset[Product] | None = None
    signing_keys: frozenset[SigningKey] | None = None
    id_key_digests: frozenset[bytes] | None = None
    author_key_digests: frozenset[bytes] | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None

    @classmethod
    def from_json(cls, untrusted: str | bytes) -> SnpPolicy:
        obj = strict_object(untrusted, limit=MAX_POLICY_FILE, error=SnpFormatError, what="policy")
        unknown = set(obj) - _POLICY_KEYS
        if unknown:
            bad = sorted(unknown)[0][:40]
            hint = closest(bad, _POLICY_KEYS)
            raise SnpFormatError(
                f"policy has unknown key {bad!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; valid keys: {', '.join(sorted(_POLICY_KEYS))}"
            )
        kw: dict[str, Any] = {}
        if "min_tcb" in obj:
            t = obj["min_tcb"]
            if not isinstance(t, dict) or set(t) - {"bootloader", "tee", "snp", "microcode", "fmc"}:
                raise SnpFormatError("policy min_tcb must be an object of bootloader/tee/snp/microcode/fmc")
            kw["min_tcb"] = TcbFloor(
                **{k: _uint(v, f"min_tcb.{k}") for k, v in t.items()},
            )
        if "measurements" in obj:
            m = obj["measurements"]
            if not isinstance(m, list) or not m:
                raise SnpFormatError("policy measurements must be a non-empty array")
            kw["measurements"] = frozenset(_hex(x, "measurements[]", 48, 48) for x in m)
        for key in ("allow_debug", "allow_migration_agent"):
            if key in obj:
                kw[key] = _bool(obj[key], key)
        if "vmpl" in obj:
            kw["vmpl"] = _uint(obj["vmpl"], "vmpl", 2)
        if "host_data" in obj:
            kw["host_data"] = resize(_hex(obj["host_data"], "host_data", 64), 32)
        if "report_data" in obj:
            kw["report_data"] = resize(_hex(obj["report_data"], "report_data", 64), 64)
        if "min_guest_svn" in obj:
            kw["min_guest_svn"] = _uint(obj["min_guest_svn"], "min_guest_svn", 32)
        if "min_firmware" in obj:
            v = obj["min_firmware"]
            parts = v.split(".") if isinstance(v, str) else []
            if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
                raise SnpFormatError("policy min_firmware must look like '1.55'")
            kw["min_firmware"] = (int(parts[0]), int(parts[1]))
        if "products" in obj:
            p = obj["products"]
            if not isinstance(p, list) or not all(isinstance(x, str) for x in p):
                raise SnpFormatError("policy products must be an array of names")
            kw["products"] = frozenset(Product.from_name(x) for x in p)
        if "signing_keys" in obj:
            s = obj["signing_keys"]
            if not isinstance(s, list) or not all(
                isinstance(x, str) and x.upper() in ("VCEK", "VLEK") for x in s
            ):
                raise SnpFormatError("policy signing_keys must be an array of 'vcek'/'vlek'")
            kw["signing_keys"] = frozenset(SigningKey[x.upper()] for x in s)
        for key in ("id_key_digests", "author_key_digests"):
            if key in obj:
                d = obj[key]
                if not isinstance(d, list) or not d:
                    raise SnpFormatError(f"policy {key} must be a non-empty array")
                kw[key] = frozenset(_hex(x, f"{key}[]", 48, 48) for x in d)
        for key in ("family_id", "image_id"):
            if key in obj:
                kw[key] = _hex(obj[key], key, 16, 16)
        return cls(**kw)


def validate(verified: VerifiedReport, policy: SnpPolicy) -> VerifiedReport:
    """Return ``verified`` if ``policy`` accepts it, else raise :class:`SnpPolicyViolation`."""
    r = verified.report
    if r.policy.debug and not policy.allow_debug:
        raise SnpPolicyViolation(
            "guest policy allows debugging (DEBUG bit set); the policy forbids debug guests"
        )
    if r.policy.migrate_ma and not policy.allow_migration_agent:
        raise SnpPolicyViolation("guest policy allows a migration agent; the policy forbids it")
    if policy.vmpl is not None and r.vmpl != policy.vmpl:
        raise SnpPolicyViolation(f"report comes from VMPL {r.vmpl}, the policy requires VMPL {policy.vmpl}")
    if policy.products is not None and verified.product not in policy.products:
        raise SnpPolicyViolation(f"product {verified.product.value} is not allowed by the policy")
    if policy.signing_keys is not None and verified.signing_key not in policy.signing_keys:
        raise SnpPolicyViolation(
            f"reports signed by a {verified.signing_key.name} are not allowed by the policy"
        )
    if policy.min_tcb is not None:
        f, t = policy.min_tcb, r.reported_tcb
        checks = [
            ("bootloader", t.bootloader, f.bootloader),
            ("tee", t.tee, f.tee),
            ("snp", t.snp, f.snp),
            ("microcode", t.microcode, f.microcode),
        ]
        if t.fmc is not None and f.fmc is not None:
            checks.append(("fmc", t.fmc, f.fmc))
        for name, have, need in checks:
            if have < need:
                raise SnpPolicyViolation(f"REPORTED_TCB {name}={have} is below the minimum {need}")
    if policy.min_guest_svn is not None and r.guest_svn < policy.min_guest_svn:
        raise SnpPolicyViolation(f"GUEST_SVN {r.guest_svn} is below the minimum {policy.min_guest_svn}")
    if policy.min_firmware is not None and (r.current.major, r.current.minor) < policy.min_firmware:
        floor = ".".join(map(str, policy.min_firmware))
        raise SnpPolicyViolation(f"SNP firmware {r.current} is older than {floor}")
    if policy.measurements is not None and r.measurement not in policy.measurements:
        raise SnpPolicyViolation(
            f"launch measurement {r.measurement.hex()[:16]}... is not an allowed reference value"
        )
    if policy.id_key_digests is not None and r.id_key_digest not in policy.id_key_digests:
        raise SnpPolicyViolation("the launch ID key (ID_KEY_DIGEST) is not an allowed one")
    if policy.author_key_digests is not None and (
        not r.key_info.author_key_en or r.author_key_digest not in policy.author_key_digests
    ):
        raise SnpPolicyViolation(
            "the ID block author key (AUTHOR_KEY_DIGEST) is absent or not an allowed one"
        )
    if policy.family_id is not None and r.family_id != policy.family_id:
        raise SnpPolicyViolation("FAMILY_ID differs from the policy's value")
    if policy.image_id is not None and r.image_id != policy.image_id:
        raise SnpPolicyViolation("IMAGE_ID differs from the policy's value")
    if policy.host_data is not None and not hmac.compare_digest(policy.host_data, r.host_data):
        raise SnpPolicyViolation("HOST_DATA (init-data digest) differs from the policy's value")
    if policy.report_data is not None and not hmac.compare_digest(policy.report_data, r.report_data):
        raise SnpPolicyViolation("REPORT_DATA differs from the policy's value")
    return verified
