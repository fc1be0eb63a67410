"""``[attestation_service] type = "intel_ta"``: the KBS hands evidence to Intel Trust Authority
(a cloud service) over its documented REST API, as trustee's KBS does
(``kbs/src/attestation/intel_trust_authority``):

``POST {base_url}/appraisal/v2/attest`` with ``x-api-key``, JSON ``{"policy_ids",
"policy_must_match", "tdx"|"sgx": {"quote", "runtime_data", "user_data"?, "event_log"?},
"nvgpu"?: {"gpu_nonce", "arch", "evidence_list"}}`` -> ``{"token"}`` (an error answer is
``{"error"}``); the token is checked against the JWK set at ``certs_file`` before it is returned.
``runtime_data`` is standard base64 of the compact, key-sorted JSON of
``{"additional-evidence","nonce","tee-pubkey"}``; a TDX caller that lists ``sha512`` gets it
selected (``sha256`` for SGX).

Not tested against the real service (it is a cloud service): the tests replay its documented
answers from a local server."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import httpx

from coco_common.b64 import b64_encode
from coco_common.http import async_client
from coco_common.http_body import DECODABLE, HttpBodyError, read_body
from coco_common.strict_json import strict_loads

from .config import AttestationServiceConfig
from .ear import TokenVerifier
from .errors import KbsAttestationError, KbsError, RvpsError
from .jwks import load_jwk_set

__all__ = ["IntelTrustAuthority", "ItaReferenceValues"]

log = logging.getLogger(__name__)

ATTEST_PATH = "/appraisal/v2/attest"
USER_AGENT = "Confidential-containers-trustee coco-py-kbs"
#: largest ITA answer read
MAX_RESPONSE = 1024 * 1024
_FAILED = "Attestation error: RCAR handshake Attest failed"


def _serde_json(v: Any) -> str:
    """serde_json's ``Value::to_string``: compact, object keys sorted, non-ASCII kept."""
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class _NoPolicies:
    async def set(self, policy_id: str, policy: bytes) -> None:
        raise KbsAttestationError("Set policy failed: Set Policy API is unimplemented")

    async def list_ids(self) -> list[str]:
        return []


class ItaReferenceValues:
    """With ``intel_ta`` there is no RVPS behind the KBS (trustee: unimplemented)."""

    async def register(self, untrusted_body: bytes) -> list[str]:
        raise RvpsError("RVPS error: Register Reference Value API is unimplemented")

    async def get(self, name: str) -> Any:
        raise RvpsError("RVPS error: Query Reference Value API is unimplemented")


class IntelTrustAuthority:
    def __init__(self, cfg: AttestationServiceConfig, *, client: httpx.AsyncClient | None = None) -> None:
        if not cfg.ita_base_url or not cfg.ita_api_key or not cfg.ita_certs_file:
            raise KbsAttestationError("intel_ta needs base_url, api_key and certs_file")
        self._base = cfg.ita_base_url.rstrip("/")
        self._api_key = cfg.ita_api_key
        self._policy_ids = list(cfg.ita_policy_ids)
        self._must_match = bool(self._policy_ids) and not bool(cfg.ita_allow_unmatched_policy)
        self._verifier = TokenVerifier(trusted_jwks=load_jwk_set(cfg.ita_certs_file))
        self._http = client or async_client(timeout=60)
        self.policies = _NoPolicies()
        self.rvps = ItaReferenceValues()

    # --- the challenge: hash algorithm as trustee's ITA backend picks it ---------------------
    @staticmethod
    def select_hash_algorithm(tee: str, extra_params: Any) -> tuple[str, Any]:
        """(hash algorithm, challenge ``extra-params``) for ``/auth``."""
        algs = extra_params.get("supported-hash-algorithms") if isinstance(extra_params, dict) else None
        if not isinstance(algs, list):
            return "sha384", ""  # legacy clients: trustee's generic challenge
        have = {a.lower() for a in algs if isinstance(a, str)}
        need = {"tdx": "sha512", "sgx": "sha256", "az-tdx-vtpm": "sha256"}.get(tee)
        if need is None:
            raise KbsAttestationError("Attestation error: ITA: Unknown TEE specified")
        if need not in have:
            raise KbsAttestationError(f"Attestation error: ITA: {tee} TEE does not support {need}")
        return need, {"selected-hash-algorithm": need}

    def _request(
        self, tee: str, primary: Any, runtime: dict[str, Any], devices: dict[str, Any]
    ) -> dict[str, Any]:
        req: dict[str, Any] = {"policy_ids": self._policy_ids, "policy_must_match": self._must_match}
        if tee not in ("tdx", "sgx"):
            raise ValueError(f"Intel Trust Authority: TEE {tee} is not supported by this KBS")
        if not isinstance(primary, dict) or not isinstance(primary.get("quote"), str):
            raise ValueError("evidence has no quote")
        ev: dict[str, Any] = {
            "quote": primary["quote"],
            "runtime_data": b64_encode(_serde_json(runtime).encode()),
        }
        if isinstance(primary.get("user_data"), str):
            ev["user_data"] = primary["user_data"]
        if isinstance(primary.get("cc_eventlog"), str):
            ev["event_log"] = primary["cc_eventlog"]
        req[tee] = ev
        nv = devices.get("nvidia")
        if isinstance(nv, dict) and isinstance(nv.get("device_evidence_list"), list):
            dev_rt = {k: v for k, v in runtime.items() if k != "additional-evidence"}
            items = [
                d
                for d in nv["device_evidence_list"]
                if isinstance(d, dict) and d.get("arch") in ("HOPPER", "BLACKWELL")
            ]
            if items:
                req["nvgpu"] = {
                    "gpu_nonce": hashlib.sha512(_serde_json(dev_rt).encode()).digest()[:32].hex(),
                    "arch": items[0]["arch"],
                    "evidence_list": [
                        {"evidence": d.get("evidence"), "certificate": d.get("certificate")} for d in items
                    ],
                }
        return req

    async def attest(
        self, *, tee: str, session_nonce: str, hash_algorithm: str, untrusted_body: bytes
    ) -> str:
        from .attestation_service import additional_evidence, parse_attestation

        try:
            _init, nonce, key, primary, additional = parse_attestation(
                untrusted_body, session_nonce=session_nonce
            )
            runtime = {"tee-pubkey": key.to_jwk(), "nonce": nonce, "additional-evidence": additional}
            devices = additional_evidence(additional) if additional else {}
            body = self._request(tee, primary, runtime, devices)
        except KbsError as exc:  # its detail is for the client, the reason for the log
            log.warning("attestation rejected: %s", exc)
            raise
        except Exception as exc:
            log.warning("attestation rejected: %s", exc)
            raise KbsAttestationError(_FAILED) from exc
        return await self._post(body)

    async def _post(self, body: dict[str, Any]) -> str:
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "x-api-key": self._api_key,
        }
        try:
            async with self._http.stream(
                "POST", self._base + ATTEST_PATH, content=json.dumps(body).encode(), headers=headers
            ) as r:
                raw = await read_body(r, MAX_RESPONSE, decode=DECODABLE, what="ITA response")
                status = r.status_code
        except HttpBodyError as exc:  # too large, refused/corrupt coding, cut mid-body
            log.warning("Intel Trust Authority answer unusable: %s", exc)
            raise KbsAttestationError(_FAILED) from exc
        except httpx.HTTPError as exc:
            log.warning("Intel Trust Authority unreachable: %s", type(exc).__name__)
            raise KbsAttestationError(_FAILED) from exc
        try:
            doc = strict_loads(raw, limit=MAX_RESPONSE)
        except ValueError:
            doc = None
        if status != 200:
            err = doc.get("error") if isinstance(doc, dict) else None
            log.warning("ITA attestation request failed: status=%s message=%s", status, str(err)[:200])
            raise KbsAttestationError(_FAILED)
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            log.warning("ITA answer has no token")
            raise KbsAttestationError(_FAILED)
        try:
            self._verifier.verify(token)
        except KbsError as exc:
            log.warning("ITA token refused: %s", exc.detail)
            raise KbsAttestationError(_FAILED) from exc
        return token

    async def close(self) -> None:
        await self._http.aclose()
