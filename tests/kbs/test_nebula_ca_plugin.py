"""trustee's ``nebula-ca`` plugin with Debian's ``nebula-cert`` (a real Nebula CA in a temp dir):
an attested caller gets a host certificate that ``nebula-cert verify`` accepts against the CA."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from kbs.app import build_state
from kbs.config import parse_config
from kbs.errors import KbsConfigError
from kbs.server import make_app
from kbs_client.tee_key import TeeKeyPair

from .conftest import admin_material, config_doc
from .test_api import attest_body, do_attest, handshake

pytestmark = pytest.mark.skipif(shutil.which("nebula-cert") is None, reason="nebula (Debian) not installed")


def _version() -> str:
    out = subprocess.run(["nebula-cert", "--version"], capture_output=True, check=True).stdout.decode()
    return out.removeprefix("Version: ").strip()


def _err(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def test_nebula_credentials_for_attested_callers(tmp_path: Path) -> None:
    _, pub = admin_material(tmp_path)
    doc = config_doc(tmp_path, pub)
    plugin = {"name": "nebula-ca", "work_dir": str(tmp_path / "nebula"), "ca_config": {"name": "test CA"}}
    doc["plugins"] = [plugin]
    if tuple(int(x) for x in _version().split(".")[:3]) < (
        1,
        9,
        5,
    ):  # Debian 12 ships 1.6.1: trustee would refuse it; this KBS needs the key
        with pytest.raises(KbsConfigError, match=r"older than 1\.9\.5"):
            await build_state(parse_config(doc, str(tmp_path)))
        plugin["min_nebula_cert_version"] = _version()
    state = await build_state(parse_config(doc, str(tmp_path)))
    ca_crt = tmp_path / "nebula" / "ca" / "ca.crt"
    assert ca_crt.exists() and (tmp_path / "nebula" / "ca" / "ca.key").exists()
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    url = f"{base}/kbs/v0/nebula-ca/credential"
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.get(url, params={"name": "node1", "ip": "10.9.0.2/24"})
            assert r.status_code == 401 and _err(r) == "TokenNotFound"
            tee = TeeKeyPair.generate()
            sid, nonce = await handshake(http, base)
            assert (await do_attest(http, base, sid, attest_body(nonce, tee))).status_code == 200
            cookie = {"Cookie": f"kbs-session-id={sid}"}
            r = await http.get(url, params={"name": "node1", "ip": "10.9.0.2/24"}, headers=cookie)
            assert r.status_code == 401 and _err(r) == "PolicyDeny"  # the default policy
            await state.resource_policy.set(
                b'package policy\nimport rego.v1\ndefault allow := false\nallow if data.plugin == "nebula-ca"\n'
            )
            r = await http.get(url, params={"name": "node1", "ip": "10.9.0.2/24", "groups": "kbs,test"},
                               headers=cookie)  # fmt: skip
            assert r.status_code == 200, r.text
            cred = json.loads(tee.decrypt(r.json()))
            assert set(cred) == {"node_crt", "node_key", "ca_crt"}
            assert bytes(cred["ca_crt"]) == ca_crt.read_bytes()
            node = tmp_path / "node.crt"
            node.write_bytes(bytes(cred["node_crt"]))
            subprocess.run(["nebula-cert", "verify", "-ca", str(ca_crt), "-crt", str(node)], check=True)
            shown = subprocess.run(["nebula-cert", "print", "-json", "-path", str(node)], capture_output=True,
                                   check=True).stdout.decode()  # fmt: skip
            assert "node1" in shown and "10.9.0.2" in shown and "kbs" in shown
            for bad in ({"name": "node1"}, {"name": "-flag", "ip": "10.9.0.3/24"},
                        {"name": "n", "ip": "10.9.0.3"}, {"name": "n", "ip": "10.9.0.3/24", "duration": "1 h"}):  # fmt: skip
                r = await http.get(url, params=bad, headers=cookie)
                assert r.status_code == 401 and _err(r) == "PluginInternalError", bad
            r = await http.post(url, params={"name": "n", "ip": "10.9.0.4/24"}, headers=cookie)
            assert r.status_code == 401 and _err(r) == "PluginInternalError" and "Only GET" in r.text
    finally:
        await server.close()
        for c in state.closers:
            await c()
    # the CA is kept across restarts: a second start reuses it
    before = ca_crt.read_bytes()
    state = await build_state(parse_config(doc, str(tmp_path)))
    for c in state.closers:
        await c()
    assert ca_crt.read_bytes() == before
