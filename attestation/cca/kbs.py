"""The KBS adapter for ``cca`` (trustee's "local" mode): evidence
``{"token": [CBOR bytes as a JSON byte array]}``.

Checks: the token's structure; the platform token's signature by the CPAK
that the trust-anchor store lists for this platform's instance and
implementation IDs; the realm token's signature by its RAK; the RAK bound
into the platform challenge; the realm challenge equals the expected report
data zero-padded to 64 bytes; the realm personalization value (RPV) equals the
init-data digest zero-padded to 64 bytes when one is expected. With a
reference-value store, the platform's software components, configuration and
the realm's measurements are compared and the outcome reported in the claims
(``platform_reference_values`` / ``realm_reference_values``: ``"match"``,
``"mismatch"`` or ``"none"``), as trustee's appraisal feeds trust vectors
rather than rejecting.

Trust anchors use trustee's ``tastore.json`` format: a list of
``{"pkey": <EC JWK>, "implementation-id": hex, "instance-id": hex}``;
reference values trustee's ``rvstore.json``.

Claims (trustee's names): ``realm`` {``cca-realm-personalization-value``,
``cca-realm-initial-measurement``, ``cca-realm-extensible-measurements``,
``cca-realm-hash-algo-id``, ``cca-realm-challenge``} (base64), ``platform``
{``cca-platform-instance-id``, ``cca-platform-implementation-id``} (base64),
``report_data`` (challenge hex), ``init_data`` (RPV hex).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attestation._binding import resize
from attestation._files import read_config_file
from attestation.cca.endorsements import TrustAnchor, load_trust_anchors
from attestation.cca.errors import CcaVerificationError
from attestation.cca.evidence import evidence_token
from attestation.cca.token import CcaToken, parse_token
from attestation.cca.verify import verify_token
from attestation.replay import BindingSkip
from coco_common.b64 import b64_encode
from coco_common.strict_json import strict_loads

__all__ = ["CcaVerifier", "appraise_platform", "appraise_realm", "cca_claims"]

log = logging.getLogger(__name__)

#: a trustee tastore.json / rvstore.json: CPAKs or reference values per platform
_STORE_LIMIT = 4 << 20


def cca_claims(t: CcaToken) -> dict[str, Any]:
    r, p = t.realm, t.platform
    return {
        "realm": {
            "cca-realm-personalization-value": b64_encode(r.personalization_value),
            "cca-realm-initial-measurement": b64_encode(r.initial_measurement),
            "cca-realm-extensible-measurements": [b64_encode(m) for m in r.extensible_measurements],
            "cca-realm-hash-algo-id": r.hash_algo_id,
            "cca-realm-challenge": b64_encode(r.challenge),
        },
        "platform": {
            "cca-platform-instance-id": b64_encode(p.instance_id),
            "cca-platform-implementation-id": b64_encode(p.implementation_id),
        },
        "report_data": r.challenge.hex(),
        "init_data": r.personalization_value.hex(),
    }


def appraise_platform(t: CcaToken, rvs: Any) -> str:
    entries = [e for e in rvs.get("platform", []) if isinstance(e, Mapping)]
    mine = [e for e in entries if str(e.get("implementation-id", "")) == t.platform.implementation_id.hex()]
    if not mine:
        return "none"
    measured = {c["measurement-value"].hex() for c in t.platform.sw_components}
    for e in mine:
        known = {
            str(c.get("measurement-value", "")) for c in e.get("sw-components", []) if isinstance(c, Mapping)
        }
        cfg = e.get("platform-configuration")
        if measured <= known and (cfg is None or cfg == t.platform.config.hex()):
            return "match"
    return "mismatch"


def appraise_realm(t: CcaToken, rvs: Any) -> str:
    entries = [e for e in rvs.get("realm", []) if isinstance(e, Mapping)]
    if not entries:
        return "none"
    r = t.realm
    rem = [m.hex() for m in r.extensible_measurements]
    for e in entries:
        if (
            e.get("initial-measurement") == r.initial_measurement.hex()
            and e.get("extensible-measurements", rem) == rem
            and e.get("personalization-value", r.personalization_value.hex()) == r.personalization_value.hex()
        ):
            return "match"
    return "mismatch"


class CcaVerifier:
    """:param ta_store: path of a trustee ``tastore.json`` (CPAKs per platform).
    :param rv_store: path of a trustee ``rvstore.json`` (optional appraisal).
    :param insecure_skip_report_data_binding: TEST ONLY, a reason (recorded tokens)."""

    tee = "cca"

    def __init__(
        self,
        *,
        ta_store: str | None = None,
        trust_anchors: list[TrustAnchor] | None = None,
        rv_store: str | None = None,
        insecure_skip_report_data_binding: str | None = None,
    ) -> None:
        anchors = list(trust_anchors or [])
        if ta_store is not None:
            anchors += load_trust_anchors(
                strict_loads(read_config_file(ta_store, _STORE_LIMIT, "CCA ta_store"))
            )
        self.anchors = anchors
        self.rvs: Any = (
            strict_loads(read_config_file(rv_store, _STORE_LIMIT, "CCA rv_store")) if rv_store else {}
        )
        if not isinstance(self.rvs, Mapping):
            raise ValueError("CCA reference-value store must be a JSON object")
        self._insecure = BindingSkip(
            insecure_skip_report_data_binding, tee=self.tee, what="realm challenge binding"
        )

    def verify_evidence(self, untrusted_evidence: Any) -> CcaToken:
        token = parse_token(evidence_token(untrusted_evidence))
        p = token.platform
        anchors = [
            a
            for a in self.anchors
            if hmac.compare_digest(a.instance_id, p.instance_id)
            and hmac.compare_digest(a.implementation_id, p.implementation_id)
        ]
        if not anchors:
            raise CcaVerificationError("no trust anchor (CPAK) is configured for this CCA platform")
        verify_token(token, anchors[0].key)
        return token

    def verify(
        self,
        untrusted_evidence: Any,
        *,
        expected_report_data: bytes,
        expected_init_data_hash: bytes | None,
        now: datetime,
    ) -> dict[str, Any]:
        token = self.verify_evidence(untrusted_evidence)
        r = token.realm
        expected = self._insecure.expected(expected_report_data)
        if expected is not None and not hmac.compare_digest(resize(expected, 64), r.challenge):
            raise CcaVerificationError("realm token challenge claim does not match expected_report_data")
        if expected_init_data_hash is not None and not hmac.compare_digest(
            resize(expected_init_data_hash, 64), r.personalization_value
        ):
            raise CcaVerificationError("init data hash is different from that in CCA token")
        claims = cca_claims(token)
        claims["platform_reference_values"] = appraise_platform(token, self.rvs)
        claims["realm_reference_values"] = appraise_realm(token, self.rvs)
        return self._insecure.mark(claims)
