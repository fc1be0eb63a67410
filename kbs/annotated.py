"""The annotated evidence of one EAR submod, laid out as trustee's token broker
lays it out (``transform_claims``): the verifier's ``init_data`` and
``report_data`` claims move to the top level, with ``init_data_claims`` /
``runtime_data_claims`` beside them only when the verifier returned that
claim (i.e. bound it); everything else stays under the TEE's name. The
attestation policy sees this document as ``input``; the KBS finds the TEE
key at ``runtime_data_claims/tee-pubkey``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import KbsAttestationError

__all__ = ["AnnotationError", "annotate"]


class AnnotationError(KbsAttestationError, ValueError):
    """A verifier returned ``init_data`` / ``report_data`` that is not a string (an attestation
    failure: trustee's ``AttestationError``)."""

    variant = "AttestationError"


def annotate(
    tee: str,
    claims: Mapping[str, Any],
    *,
    init_data_claims: Any,
    runtime_data_claims: Any,
) -> dict[str, Any]:
    """-> ``{tee: rest, ["init_data", "init_data_claims"], ["report_data", "runtime_data_claims"]}``.

    ``init_data_claims`` / ``runtime_data_claims`` are what the attestation
    request carried (``None`` = JSON null: a digest-only init-data, raw runtime
    data, or none at all)."""
    rest = dict(claims)
    out: dict[str, Any] = {}
    if "init_data" in rest:
        value = rest.pop("init_data")
        if not isinstance(value, str):
            raise AnnotationError(f"{tee} verifier returned a non-string init_data")
        out["init_data"] = value
        out["init_data_claims"] = init_data_claims
    if "report_data" in rest:
        value = rest.pop("report_data")
        if not isinstance(value, str):
            raise AnnotationError(f"{tee} verifier returned a non-string report_data")
        out["report_data"] = value
        out["runtime_data_claims"] = runtime_data_claims
    out[tee] = rest
    return out
