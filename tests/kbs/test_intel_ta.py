"""``intel_ta``: the KBS against a local server that replays Intel Trust Authority's documented
REST answers (``POST /appraisal/v2/attest`` -> ``{"token"}`` signed PS384, the JWK set it is
checked against, ``{"error"}`` on a bad API key). ITA is a cloud service: this is NOT a test
against the real thing. Configured by trustee's own
``kbs/config/kbs-config-intel-trust-authority.toml`` (URLs, storage dir rewritten)."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from kbs.app import build_state
from kbs.config import load_config
from kbs.server import make_app
from kbs.storage import NS_REPOSITORY
from kbs_client.rcar import auth_body
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from kbs_protocol.jws import public_key_to_jwk, sign
from kbs_protocol.policies import builtin_policy

CONFIG = (
    Path(__file__).resolve().parents[1] / "fixtures" / "trustee" / "configs"
    / "config_kbs-config-intel-trust-authority.toml"
)  # fmt: skip
API_KEY = "tBfd5kKX2x9ahbodKV1..."  # the placeholder in trustee's file


class ReplayIta:
    """Answers as ITA documents them; records what it was sent."""

    def __init__(self, api_keys: tuple[str, ...] = (API_KEY,)) -> None:
        self.api_keys = api_keys
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_get("/certs", self.certs)
        self.app.router.add_post("/appraisal/v2/attest", self.attest)

    async def certs(self, request: web.Request) -> web.Response:
        jwk = public_key_to_jwk(self.key.public_key()) | {"kid": "ita-signing-1", "alg": "PS384"}
        return web.json_response({"keys": [jwk]})

    async def attest(self, request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") not in self.api_keys:
            return web.json_response({"error": "Invalid API key"}, status=401)
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        runtime = json.loads(base64.b64decode(body["tdx"]["runtime_data"]))
        now = int(time.time())
        claims = {
            "tdx": {"attester_type": "TDX", "attester_tcb_status": "UpToDate", "attester_runtime_data": runtime,
                    "tdx_mrtd": "00" * 48},
            "policy_ids_matched": [], "ver": "2.0.0", "iss": "Intel Trust Authority", "iat": now, "nbf": now,
            "exp": now + 300, "jti": os.urandom(8).hex(),
        }  # fmt: skip
        return web.json_response(
            {"token": sign(claims, self.key, alg="PS384", header={"kid": "ita-signing-1"})}
        )


def tdx_attest_body(nonce: str, key: TeeKeyPair) -> dict[str, Any]:
    quote = base64.b64encode(os.urandom(64)).decode()  # ITA appraises it; the KBS passes it on
    return {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
            "tee-evidence": {"primary_evidence": {"quote": quote}, "additional_evidence": ""}}  # fmt: skip


def _err(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def test_kbs_with_intel_trust_authority(tmp_path: Path) -> None:
    ita = ReplayIta()
    ita_server = TestServer(ita.app, host="127.0.0.1")
    await ita_server.start_server()
    ita_url = f"http://127.0.0.1:{ita_server.port}"
    cfg = load_config(str(CONFIG))
    assert cfg.attestation_service.type == "intel_ta" and cfg.attestation_service.ita_api_key == API_KEY
    a = replace(cfg.attestation_service, ita_base_url=ita_url, ita_certs_file=f"{ita_url}/certs")
    cfg = replace(cfg, attestation_service=a,
                  attestation_token=replace(cfg.attestation_token, trusted_jwk_sets=(f"{ita_url}/certs",)),
                  storage=replace(cfg.storage, local_fs_dir=str(tmp_path / "storage")))  # fmt: skip
    state = await build_state(cfg)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        secret = os.urandom(16)
        await state.store.set(NS_REPOSITORY, "default/key/ita", secret)
        await state.resource_policy.set(builtin_policy("allow_all"))
        key = TeeKeyPair.generate()
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{base}/kbs/v0/auth", json=auth_body("tdx"))
            assert r.status_code == 200, r.text
            # trustee's ITA backend selects SHA-512 for a TDX caller that lists it
            assert r.json()["extra-params"] == {"selected-hash-algorithm": "sha512"}
            sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
            http.cookies.clear()
            quote = base64.b64encode(os.urandom(64)).decode()  # ITA appraises it; the KBS passes it on
            rd = hash_canonical(
                "sha512", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()}
            )
            body = {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                    "tee-evidence": {"primary_evidence": {"quote": quote, "cc_eventlog": "ZXZ0"},
                                     "additional_evidence": ""}}  # fmt: skip
            assert rd  # the guest binds the same JSON; ITA checks it against the quote
            cookie = {"Cookie": f"kbs-session-id={sid}"}
            r = await http.post(f"{base}/kbs/v0/attest", content=json.dumps(body).encode(), headers=cookie)
            assert r.status_code == 200, r.text
            (req,) = ita.requests
            assert req["headers"]["x-api-key"] == API_KEY and req["headers"]["Accept"] == "application/json"
            sent = req["body"]
            assert sent["policy_ids"] == [] and sent["policy_must_match"] is False
            assert sent["tdx"]["quote"] == quote and sent["tdx"]["event_log"] == "ZXZ0"
            # runtime_data: base64 of serde_json's compact, key-sorted text
            rt = base64.b64decode(sent["tdx"]["runtime_data"]).decode()
            assert rt == json.dumps({"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()},
                                    separators=(",", ":"), sort_keys=True)  # fmt: skip
            # the ITA token is the session's; the TEE key is found at /tdx/attester_runtime_data
            r = await http.get(f"{base}/kbs/v0/resource/default/key/ita", headers=cookie)
            assert r.status_code == 200, r.text
            assert key.decrypt(r.json()) == secret
            # no RVPS and no attestation policies behind ITA (trustee: unimplemented)
            r = await http.post(f"{base}/kbs/v0/reference-value", content=b"{}")
            assert r.status_code == 401 and _err(r) == "RvpsError"
            # a TEE ITA does not take is refused at /auth
            r = await http.post(f"{base}/kbs/v0/auth", json=auth_body("snp"))
            assert r.status_code == 401 and _err(r) == "AttestationError"
    finally:
        await server.close()
        for c in state.closers:
            await c()
    # a wrong API key: ITA's {"error"} answer, the KBS refuses the attestation
    cfg = replace(cfg, attestation_service=replace(a, ita_api_key="wrong"))
    state = await build_state(cfg)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{base}/kbs/v0/auth", json=auth_body("tdx"))
            sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
            http.cookies.clear()
            body = {"runtime-data": {"nonce": nonce, "tee-pubkey": TeeKeyPair.generate().public_jwk()},
                    "tee-evidence": {"primary_evidence": {"quote": "AA=="}, "additional_evidence": ""}}  # fmt: skip
            r = await http.post(f"{base}/kbs/v0/attest", content=json.dumps(body).encode(),
                                headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
            assert r.status_code == 401 and _err(r) == "AttestationError"
    finally:
        await server.close()
        for c in state.closers:
            await c()
        await ita_server.close()
    assert len(ita.requests) == 1


@pytest.mark.parametrize("tee", ["sgx", "az-tdx-vtpm"])
def test_ita_hash_selection(tee: str) -> None:
    from kbs.intel_ta import IntelTrustAuthority

    assert (
        IntelTrustAuthority.select_hash_algorithm(tee, {"supported-hash-algorithms": ["sha256"]})[0]
        == "sha256"
    )
    assert IntelTrustAuthority.select_hash_algorithm(tee, "") == ("sha384", "")
