"""trustee's ``external`` plugin against a plugin server on trustee's plugin gRPC API, configured
by trustee's own ``kbs/test/config/external-plugin.toml`` (only the endpoint's port changed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
from aiohttp.test_utils import TestServer

from kbs.app import build_state
from kbs.config import load_config
from kbs.server import make_app
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.policies import builtin_policy
from tests.support.echo_plugin import echo_plugin

from .test_api import attest_body, do_attest, handshake

CONFIG = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "trustee"
    / "configs"
    / "test_config_external-plugin.toml"
)


def _err(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def test_external_plugin_flow() -> None:
    async with echo_plugin() as port:
        cfg = load_config(str(CONFIG))
        (pc,) = cfg.plugin_configs
        assert pc.options["backends"][0]["endpoint"] == "http://127.0.0.1:50051"
        backends = [dict(pc.options["backends"][0], endpoint=f"http://127.0.0.1:{port}")]
        cfg = replace(cfg, plugin_configs=(replace(pc, options={"backends": backends}),))
        state = await build_state(cfg)
        server = TestServer(make_app(state), host="127.0.0.1")
        await server.start_server()
        url = f"http://127.0.0.1:{server.port}/kbs/v0/external"
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                # admin calls (the plugin says POST is one; this config is InsecureAllowAll)
                r = await http.post(f"{url}/echo-test/x/y", content=b"hello")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
                assert r.content == b"echo:POST:x/y:hello"
                # GET: attestation token and resource policy, then the answer sealed to the TEE key
                r = await http.get(f"{url}/echo-test/x/y")
                assert r.status_code == 401 and _err(r) == "TokenNotFound"
                key = TeeKeyPair.generate()
                base = f"http://127.0.0.1:{server.port}"
                sid, nonce = await handshake(http, base)
                assert (await do_attest(http, base, sid, attest_body(nonce, key))).status_code == 200
                cookie = {"Cookie": f"kbs-session-id={sid}"}
                r = await http.get(f"{url}/echo-test/x/y", headers=cookie)
                assert r.status_code == 401 and _err(r) == "PolicyDeny"  # the default policy
                rego = b'package policy\nimport rego.v1\ndefault allow := false\nallow if data.plugin == "external"\n'
                await state.resource_policy.set(rego)
                r = await http.get(f"{url}/echo-test/x/y?k=v", headers=cookie)
                assert r.status_code == 200, r.text
                assert key.decrypt(r.json()) == b"echo:GET:x/y:"
                # trustee's allow_all allows the resource plugin only
                await state.resource_policy.set(builtin_policy("allow_all"))
                r = await http.get(f"{url}/echo-test/x/y", headers=cookie)
                assert r.status_code == 401 and _err(r) == "PolicyDeny"
                await state.resource_policy.set(rego)
                r = await http.get(f"{url}/nope/x", headers=cookie)
                assert (
                    r.status_code == 401 and _err(r) == "PluginInternalError" and "not registered" in r.text
                )
                r = await http.get(f"{url}/echo-test/fail", headers=cookie)
                assert r.status_code == 401 and _err(r) == "PluginInternalError" and "500" in r.text
        finally:
            await server.close()
            for c in state.closers:
                await c()
