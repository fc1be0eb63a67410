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


async def test_ca_crt_is_read_at_start_and_again_only_when_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per request only the node files are read (in a worker thread, not on the event
    loop); ca.crt is read at start and again only after the file changed."""
    import os
    import threading

    import kbs.nebula_ca_plugin as mod
    from kbs.external_plugin import PluginCall
    from kbs.nebula_ca_plugin import NebulaCaPlugin

    plugin = NebulaCaPlugin.open(
        {"work_dir": str(tmp_path / "nebula"), "ca_config": {"name": "t"}, "min_nebula_cert_version": "1.0.0"}
    )
    crt = tmp_path / "nebula" / "ca" / "ca.crt"
    reads: list[tuple[str, bool]] = []  # (file name, on the event loop's thread)

    def note(path: object) -> None:
        reads.append((Path(str(path)).name, threading.current_thread() is threading.main_thread()))

    real_read_bytes, real_bounded = Path.read_bytes, getattr(mod, "read_bounded", None)

    def read_bytes(self: Path) -> bytes:
        note(self)
        return real_read_bytes(self)

    def bounded(path: str, limit: int) -> bytes:
        note(path)
        assert real_bounded is not None
        return real_bounded(path, limit)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(mod, "read_bounded", bounded, raising=False)
    call = PluginCall(b"", {"name": "node1", "ip": "10.9.0.2/24"}, ["credential"], "GET")
    for _ in range(2):
        assert bytes(json.loads(await plugin.handle(call))["ca_crt"]) == real_read_bytes(crt)
    assert sorted(reads) == sorted([("node.crt", False), ("node.key", False)] * 2)
    reads.clear()
    st = crt.stat()
    os.utime(crt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the operator replaced it
    await plugin.handle(call)
    assert ("ca.crt", False) in reads and [r for r in reads if r[0] == "ca.crt"] == [("ca.crt", False)]
