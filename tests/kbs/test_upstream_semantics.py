"""Behaviour as trustee v0.21 has it where this KBS used to differ: PUT on a resource, the
attestation-policy body, reference-value messages, ``[admin]`` without a mode; and the
``[compatibility]`` keys that give trustee's behaviour where this KBS keeps a deliberate
difference."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from kbs.config import parse_config
from kbs.errors import KbsConfigError
from kbs.rvps import RV_LIFETIME_S, ReferenceValues
from kbs.storage import NS_REPOSITORY, MemoryStore
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.policies import builtin_policy

from .conftest import Kbs, start
from .test_api import attest_body, do_attest, handshake


def _err(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def test_put_on_a_resource_is_not_an_admin_write(kbs: Kbs, http: httpx.AsyncClient) -> None:
    await kbs.seed(http, "default/key/p", b"original")
    url = f"{kbs.url}/kbs/v0/resource/default/key/p"
    # an admin token is not what PUT needs: trustee checks the attestation token first
    r = await http.put(url, content=b"overwritten", headers=kbs.admin_headers())
    assert r.status_code == 401 and _err(r) == "TokenVerifierError", r.text
    r = await http.put(url, content=b"overwritten")
    assert r.status_code == 401 and _err(r) == "TokenNotFound"
    # with an attested session and a policy that allows it, the plugin refuses the method
    await kbs.policy(http, "allow_all")
    key = TeeKeyPair.generate()
    sid, nonce = await handshake(http, kbs.url)
    assert (await do_attest(http, kbs.url, sid, attest_body(nonce, key))).status_code == 200
    r = await http.put(url, content=b"overwritten", headers={"Cookie": f"kbs-session-id={sid}"})
    http.cookies.clear()
    assert r.status_code == 401 and _err(r) == "PluginInternalError" and "Illegal HTTP method" in r.text
    assert await kbs.state.store.get(NS_REPOSITORY, "default/key/p") == b"original"


async def test_attestation_policy_needs_policy_id(kbs: Kbs, http: httpx.AsyncClient) -> None:
    rego = b"package policy\nimport rego.v1\ntrust_claims := {}\n"
    pol = base64.urlsafe_b64encode(rego).rstrip(b"=").decode()
    r = await http.post(f"{kbs.url}/kbs/v0/attestation-policy", json={"type": "rego", "policy": pol},
                        headers=kbs.admin_headers())  # fmt: skip
    assert r.status_code == 401 and _err(r) == "AttestationError"
    assert r.json()["detail"] == "Attestation error: Set Attestation Policy failed"  # trustee's text
    assert await kbs.state.service.policies.list_ids() == []  # nothing stored under a made-up id
    # trustee's SetPolicyInput: any failure to read it is the same KbsAttestationError
    for raw in (b"{", b"[]", json.dumps({"policy_id": 5, "policy": pol}).encode(),
                json.dumps({"policy_id": "default_cpu", "policy": "!!"}).encode(),
                json.dumps({"policy_id": "default_cpu"}).encode()):  # fmt: skip
        r = await http.post(f"{kbs.url}/kbs/v0/attestation-policy", content=raw, headers=kbs.admin_headers())
        assert r.status_code == 401 and _err(r) == "AttestationError", raw
    # members other than policy_id and policy are ignored (serde), type included
    body = {"type": "anything", "policy_id": "default_cpu", "policy": pol, "extra": 1}
    r = await http.post(f"{kbs.url}/kbs/v0/attestation-policy", json=body, headers=kbs.admin_headers())
    assert r.status_code == 200, r.text
    assert await kbs.state.service.policies.list_ids() == ["default_cpu"]


async def test_resource_policy_body_as_trustee(kbs: Kbs, http: httpx.AsyncClient) -> None:
    """Audit K11: every body failure is ParsePolicyError with trustee's text; extra members
    are ignored."""
    url = f"{kbs.url}/kbs/v0/resource-policy"
    before = await kbs.state.store.get("kbs", "resource-policy.rego")
    cases = {
        b"not json": "Illegal SetPolicy Request Json",
        b'{"nope": "x"}': "No `policy` field inside SetPolicy Request Json",
        b"[1]": "No `policy` field inside SetPolicy Request Json",
        b'{"policy": 5}': "`policy` field is not a string in SetPolicy Request Json",
        b'{"policy": "!!"}': "Failed to decode policy",
    }
    for raw, why in cases.items():
        r = await http.post(url, content=raw, headers=kbs.admin_headers())
        assert r.status_code == 401 and _err(r) == "ParsePolicyError", raw
        assert r.json()["detail"] == f"Failed to parse policy: {why}"
    assert await kbs.state.store.get("kbs", "resource-policy.rego") == before
    allow = base64.urlsafe_b64encode(builtin_policy("allow_all")).rstrip(b"=").decode()
    r = await http.post(url, json={"policy": allow, "comment": "ignored"}, headers=kbs.admin_headers())
    assert r.status_code == 200, r.text
    assert await kbs.state.store.get("kbs", "resource-policy.rego") == builtin_policy("allow_all")


@pytest.mark.parametrize("check", [True, False])
async def test_policy_syntax_check_at_upload_unless_compatibility_says(tmp_path: Path, check: bool) -> None:
    """Deliberate difference: a policy that is not Rego is refused at upload; with
    ``[compatibility] check_policy_at_upload = false`` it is stored as trustee stores it, and
    fails when evaluated."""
    kbs, server = await start(tmp_path, compatibility={"check_policy_at_upload": check})
    broken = base64.urlsafe_b64encode(b"package policy\nallow if {{").rstrip(b"=").decode()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{kbs.url}/kbs/v0/resource-policy", json={"policy": broken},
                                headers=kbs.admin_headers())  # fmt: skip
            assert (r.status_code == 401 and _err(r) == "ParsePolicyError") if check else r.status_code == 200
            body = {"policy_id": "default_cpu", "policy": broken}
            r = await http.post(
                f"{kbs.url}/kbs/v0/attestation-policy", json=body, headers=kbs.admin_headers()
            )
            assert (r.status_code == 401) if check else r.status_code == 200
            stored = await kbs.state.service.policies.list_ids()
            assert stored == ([] if check else ["default_cpu"])
            if not check:  # the broken attestation policy now fails the appraisal
                sid, nonce = await handshake(http, kbs.url)
                r = await do_attest(http, kbs.url, sid, attest_body(nonce, TeeKeyPair.generate()))
                assert r.status_code == 401 and _err(r) == "AttestationError"
    finally:
        await server.close()
        for c in kbs.state.closers:
            await c()


def test_admin_mode_is_required(tmp_path: Path) -> None:
    with pytest.raises(KbsConfigError, match=r"admin\.authorization_mode is required"):
        parse_config({"http_server": {"insecure_http": True}, "admin": {}})


async def test_expired_reference_values_hidden_unless_compatibility_says(tmp_path: Path) -> None:
    payload = base64.b64encode(b'{"svn": ["1"]}').decode()
    msg = json.dumps({"type": "sample", "payload": payload}).encode()
    t = time.time()
    for hide, expect in ((True, None), (False, ["1"])):
        rv = ReferenceValues(MemoryStore(), hide_expired=hide)
        await rv.register(msg, now=t)
        assert await rv.get("svn", now=t + RV_LIFETIME_S + 10) == expect
    cfg = parse_config({"http_server": {"insecure_http": True}, "admin": {"authorization_mode": "DenyAll"},
                        "compatibility": {"hide_expired_reference_values": False}})  # fmt: skip
    assert cfg.compatibility.hide_expired_reference_values is False
    with pytest.raises(KbsConfigError, match="unknown field"):
        parse_config({"http_server": {"insecure_http": True}, "admin": {"authorization_mode": "DenyAll"},
                      "compatibility": {"trust_everything": True}})  # fmt: skip


async def test_trust_own_signer_off_is_trustees_token_trust(tmp_path: Path) -> None:
    """``[compatibility] trust_own_signer = false``: the KBS's own tokens need trust material, as in
    trustee; with insecure_header_jwk they are accepted again (trustee's documented setup)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(KbsConfigError, match="no trust material"):
        await start(tmp_path / "a", compatibility={"trust_own_signer": False})
    kbs, server = await start(
        tmp_path / "b",
        compatibility={"trust_own_signer": False},
        attestation_token={"insecure_header_jwk": True},
    )
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await kbs.seed(http, "default/key/t", b"t")
            await kbs.policy(http, builtin_policy("allow_all").decode())
            key = TeeKeyPair.generate()
            sid, nonce = await handshake(http, kbs.url)
            r = await do_attest(http, kbs.url, sid, attest_body(nonce, key))
            token = r.json()["token"]
            r = await http.get(
                f"{kbs.url}/kbs/v0/resource/default/key/t", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200
    finally:
        await server.close()
        for c in kbs.state.closers:
            await c()


async def test_init_data_policy_rego_becomes_agent_policy_claims(kbs: Kbs, http: httpx.AsyncClient) -> None:
    from kbs_protocol.jws import decode_unverified

    rego = 'package agent_policy\ndefault CreateContainerRequest := false\npolicy_data := {\n  "containers": [{"image": "x"}]\n}\n'
    toml = f'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"policy.rego" = \'\'\'\n{rego}\'\'\'\nk = "v"\n'
    no_data = 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"policy.rego" = "package x"\n'
    out = []
    for doc in (toml, no_data):
        key = TeeKeyPair.generate()
        sid, nonce = await handshake(http, kbs.url)
        r = await do_attest(http, kbs.url, sid, attest_body(nonce, key, init=doc))
        assert r.status_code == 200, r.text
        _, claims = decode_unverified(r.json()["token"])
        out.append(claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_claims"])
    assert out[0] == {"agent_policy_claims": {"containers": [{"image": "x"}]}, "k": "v"}
    assert out[1] == {"policy.rego": "package x"}  # nothing to extract: kept as is (trustee too)


def test_identity_providers_tried_in_order(tmp_path: Path) -> None:
    """trustee's bearer_jwt: a token that verifies with a provider's key but names another issuer
    or audience is tried against the next provider (two providers may share one key)."""
    from kbs.admin_auth import AdminAuthorizer
    from kbs.config import AdminConfig, IdentityProvider, RoleAcl
    from kbs.errors import AdminAccessDenied

    from .conftest import admin_material

    key, pub = admin_material(tmp_path)
    cfg = AdminConfig(
        mode="AuthenticatedAuthorization",
        identity_providers=(
            IdentityProvider(issuer="idp-1", audience="kbs", public_key_uri=str(pub)),
            IdentityProvider(issuer="idp-2", audience="kbs", public_key_uri=str(pub)),
        ),
        acls=(RoleAcl("admin", "^/kbs/.+$"),),
    )
    az = AdminAuthorizer(cfg)
    from kbs_protocol.jws import sign

    now = int(time.time())

    def tok(iss: str, aud: str = "kbs") -> str:
        return "Bearer " + sign(
            {"iss": iss, "aud": [aud], "role": "admin", "exp": now + 60}, key, alg="EdDSA"
        )

    assert az.check("/kbs/v0/resource-policy", tok("idp-2")) == "admin"
    assert az.check("/kbs/v0/resource-policy", tok("idp-1")) == "admin"
    for bad in (tok("idp-3"), tok("idp-2", aud="other")):
        with pytest.raises(AdminAccessDenied, match="trusted identity provider"):
            az.check("/kbs/v0/resource-policy", bad)


@pytest.mark.parametrize(
    ("v", "t"), [(-32, "affirming"), (-33, "warning"), (-96, "warning"), (-97, "contraindicated")]
)
def test_negative_tiers_as_rust_ear(v: int, t: str) -> None:
    from kbs.ear import tier

    assert tier(v) == t


async def test_small_route_semantics(kbs: Kbs, http: httpx.AsyncClient) -> None:
    # protocol version matched as semver "=0.4.0": build metadata ignored, pre-release refused
    for version, ok in (("0.4.0+build.7", True), ("0.4.0-rc1", False), ("0.4.0+build.7\n", False)):
        r = await http.post(
            f"{kbs.url}/kbs/v0/auth", json={"version": version, "tee": "sample", "extra-params": ""}
        )
        http.cookies.clear()
        assert (r.status_code == 200) is ok, r.text
    # compact JSON bodies, as serde_json writes them
    r = await http.get(f"{kbs.url}/kbs/v0/")
    assert (
        r.status_code == 404
        and _err(r) == "PluginNotFound"
        and b'","' in r.content
        and b", " not in r.content
    )
    # reference values: POST with any sub-path registers; GET without an id is an RvpsError
    payload = base64.b64encode(b'{"svn": ["7"]}').decode()
    body = json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode()
    r = await http.post(
        f"{kbs.url}/kbs/v0/reference-value/anything/here", content=body, headers=kbs.admin_headers()
    )
    assert r.status_code == 200, r.text
    assert await kbs.state.rvps.get("svn") == ["7"]
    r = await http.get(f"{kbs.url}/kbs/v0/reference-value", headers=kbs.admin_headers())
    assert r.status_code == 401 and _err(r) == "RvpsError"


async def test_other_methods_are_405(kbs: Kbs, http: httpx.AsyncClient) -> None:
    for method, path in (("PATCH", "/kbs/v0/resource/default/key/k"), ("OPTIONS", "/kbs/v0/auth"),
                         ("POST", "/metrics"), ("POST", "/healthz")):  # fmt: skip
        r = await http.request(method, f"{kbs.url}{path}")
        assert r.status_code == 405, (method, path, r.status_code)


async def test_trustee_error_texts_when_compatibility_says(tmp_path: Path) -> None:
    """Audit K15: by default error details say what failed; ``[compatibility]
    detailed_error_texts = false`` gives trustee's error.rs texts (reason only in the log)."""
    from kbs.errors import (
        KbsAttestationError,
        KbsJweError,
        ParsePolicyError,
        PluginInternalError,
        RvpsError,
        SerdeError,
        StorageError,
        TokenVerifierError,
    )

    # the variants whose trustee Display hides the source have fixed texts, the others a prefix
    assert TokenVerifierError("token expired").trustee_detail() == "Token Verifier error"
    assert PluginInternalError("Illegal HTTP method").trustee_detail() == "Plugin internal error"
    assert StorageError("disk full").trustee_detail() == "Plugin internal error"
    assert SerdeError("bad").trustee_detail() == "Serialize/Deserialize failed"
    assert KbsJweError("JWE error: x").trustee_detail() == "JWE failed"
    assert RvpsError("x").trustee_detail() == "RVPS configuration failed: x"
    assert ParsePolicyError("Failed to parse policy: y").trustee_detail() == "Failed to parse policy: y"
    assert KbsAttestationError("Attestation error: z").trustee_detail() == "Attestation error: z"

    for detailed in (True, False):
        (tmp_path / str(detailed)).mkdir()
        kbs, server = await start(tmp_path / str(detailed), compatibility={"detailed_error_texts": detailed})
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.get(
                    f"{kbs.url}/kbs/v0/resource/default/key/k",
                    headers={"Authorization": "Bearer e30.e30.AAAA"},
                )
                assert r.status_code == 401 and _err(r) == "TokenVerifierError"
                if detailed:
                    assert r.json()["detail"] != "Token Verifier error" and "token" in r.json()["detail"]
                else:
                    assert r.json()["detail"] == "Token Verifier error"
                r = await http.delete(
                    f"{kbs.url}/kbs/v0/resource/default/key/none", headers=kbs.admin_headers()
                )
                assert r.status_code == 401 and _err(r) == "PluginInternalError"
                assert (r.json()["detail"] == "Plugin internal error") is not detailed
        finally:
            await server.close()
            for c in kbs.state.closers:
                await c()


async def test_grpc_as_reads_the_compatibility_keys() -> None:
    """The separate attestation service (``grpc-as``) takes the same ``compatibility`` keys that
    concern it: policy syntax at upload and expired reference values."""
    from kbs.errors import ParsePolicyError
    from kbs.grpc_as import build_service

    broken = b"package policy\nallow if {{"
    svc, closers = await build_service({})
    try:
        with pytest.raises(ParsePolicyError):
            await svc.policies.set("default_cpu", broken)
    finally:
        for c in closers:
            await c.close()
    doc = {"compatibility": {"check_policy_at_upload": False, "hide_expired_reference_values": False}}
    svc, closers = await build_service(doc)
    try:
        await svc.policies.set("default_cpu", broken)
        assert await svc.policies.list_ids() == ["default_cpu"]
        payload = base64.b64encode(b'{"svn": ["1"]}').decode()
        assert isinstance(svc.rvps, ReferenceValues)
        await svc.rvps.register(
            json.dumps({"type": "sample", "payload": payload}).encode(), now=time.time() - 2 * RV_LIFETIME_S
        )
        assert await svc.rvps.get("svn") == ["1"]  # expired, still returned as trustee's RVPS does
    finally:
        for c in closers:
            await c.close()


@pytest.mark.parametrize("strict", [True, False])
async def test_unknown_request_members_refused_unless_compatibility_says(
    tmp_path: Path, strict: bool
) -> None:
    """Audit K2, a deliberate difference: /auth and /attest bodies with members the protocol does
    not define are refused; ``[compatibility] strict_request_bodies = false`` ignores them, as
    trustee's serde does (a future additive field from a newer client then still works)."""
    kbs, server = await start(tmp_path, compatibility={"strict_request_bodies": strict})
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await kbs.policy(http, "allow_all")
            await kbs.seed(http, "default/key/k2", b"k2-secret")
            auth = {"version": "0.4.0", "tee": "sample", "extra-params": "", "future-field": 1}
            r = await http.post(f"{kbs.url}/kbs/v0/auth", json=auth)
            http.cookies.clear()
            if strict:
                assert r.status_code == 401 and _err(r) == "AttestationError", r.text
            else:
                assert r.status_code == 200, r.text
            sid, nonce = await handshake(http, kbs.url)
            key = TeeKeyPair.generate()
            body = attest_body(nonce, key)
            body["future-field"] = {"x": 1}
            body["runtime-data"]["extra"] = "y"
            body["tee-evidence"]["more"] = []
            r = await do_attest(http, kbs.url, sid, body)
            if strict:
                assert r.status_code == 401, r.text
                return
            assert r.status_code == 200, r.text
            r = await http.get(
                f"{kbs.url}/kbs/v0/resource/default/key/k2", headers={"Cookie": f"kbs-session-id={sid}"}
            )
            http.cookies.clear()
            assert r.status_code == 200 and key.decrypt(r.json()) == b"k2-secret"
            # required members are still required, strict or not
            sid, nonce = await handshake(http, kbs.url)
            r = await do_attest(http, kbs.url, sid, {"runtime-data": {"nonce": nonce}, "tee-evidence": {}})
            assert r.status_code == 401
            r = await http.post(f"{kbs.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"})
            assert r.status_code == 401
    finally:
        await server.close()
        for c in kbs.state.closers:
            await c()
