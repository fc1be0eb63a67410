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

from attestation._binding import resize
from attestation.snp.errors import SnpFormatError, SnpPolicyViolation
from attestation.snp.report import Product, SigningKey
from attestation.snp.verify import VerifiedReport
from coco_common.cli import closest
from coco_common.fields import Fields
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


def _hex(f: Fields, key: str, text: str, max_len: int, exact: int | None = None) -> bytes:
    """Hex of at most ``max_len`` (or exactly ``exact``) bytes; ``text`` is what ``key`` held."""
    try:
        b = bytes.fromhex(text)
    except ValueError as exc:
        raise f.fail(key, "is not hex") from exc
    if len(b) > max_len or (exact is not None and len(b) != exact):
        raise f.fail(key, "has the wrong length")
    return b


def _digests(f: Fields, key: str, size: int) -> frozenset[bytes] | None:
    """A non-empty array of hex digests of ``size`` bytes each."""
    items = f.list(key, str)
    if items is None:
        return None
    if not items:
        raise f.fail(key, "must be a non-empty array")
    return frozenset(_hex(f, f"{key}[]", x, size, size) for x in items)


def _tcb_floor(f: Fields) -> TcbFloor | None:
    if f.get("min_tcb", dict) is None:
        return None
    t = Fields(f.table["min_tcb"], error=SnpFormatError, where="min_tcb", label="policy", unknown="error")
    spl = {k: t.int(k, 0, min=0, max=255) or 0 for k in ("bootloader", "tee", "snp", "microcode")}
    floor = TcbFloor(**spl, fmc=t.int("fmc", min=0, max=255))
    t.done()
    return floor


def _firmware(f: Fields) -> tuple[int, int] | None:
    v = f.str("min_firmware")
    if v is None:
        return None
    parts = v.split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise f.fail("min_firmware", "must look like '1.55'")
    return int(parts[0]), int(parts[1])


def _signing_keys(f: Fields) -> frozenset[SigningKey] | None:
    keys = f.list("signing_keys", str)
    if keys is None:
        return None
    if not all(x.upper() in ("VCEK", "VLEK") for x in keys):
        raise f.fail("signing_keys", "must be an array of 'vcek'/'vlek'")
    return frozenset(SigningKey[x.upper()] for x in keys)


def _resized(f: Fields, key: str, size: int) -> bytes | None:
    text = f.str(key)
    return None if text is None else resize(_hex(f, key, text, 64), size)


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
        f = Fields(obj, error=SnpFormatError, label="policy")
        products = f.list("products", str)
        family_id, image_id = f.hex("family_id", size=16), f.hex("image_id", size=16)
        return cls(
            min_tcb=_tcb_floor(f),
            measurements=_digests(f, "measurements", 48),
            allow_debug=bool(f.bool("allow_debug", False)),
            allow_migration_agent=bool(f.bool("allow_migration_agent", False)),
            vmpl=f.int("vmpl", min=0, max=3),
            host_data=_resized(f, "host_data", 32),
            report_data=_resized(f, "report_data", 64),
            min_guest_svn=f.int("min_guest_svn", min=0, max=0xFFFFFFFF),
            min_firmware=_firmware(f),
            products=frozenset(Product.from_name(x) for x in products) if products is not None else None,
            signing_keys=_signing_keys(f),
            id_key_digests=_digests(f, "id_key_digests", 48),
            author_key_digests=_digests(f, "author_key_digests", 48),
            family_id=family_id,
            image_id=image_id,
        )


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
