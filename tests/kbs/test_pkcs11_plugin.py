"""trustee's ``pkcs11`` plugin against a real PKCS#11 token: SoftHSM2 (Debian ``softhsm2``),
initialised in a temp dir by ``softhsm2-util``, with an RSA wrap key generated in the token."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kbs.app import build_state
from kbs.config import parse_config
from kbs.server import make_app
from kbs_client.tee_key import TeeKeyPair

from .conftest import admin_material, config_doc
from .test_api import attest_body, do_attest, handshake

_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
MODULE = next((m for m in _MODULES if Path(m).exists()), None)
PIN = "1234"

pytestmark = pytest.mark.skipif(
    MODULE is None or shutil.which("softhsm2-util") is None, reason="SoftHSM2 (Debian softhsm2) not installed"
)


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "kbs", "--pin", PIN, "--so-pin", "5678"],
                   check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)})  # fmt: skip
    import pkcs11

    lib = pkcs11.lib(MODULE)
    lib.reinitialize()  # this token directory, whatever an earlier test loaded
    tok = lib.get_token(token_label="kbs")
    with tok.open(rw=True, user_pin=PIN) as s:
        pub, _ = s.generate_keypair(pkcs11.KeyType.RSA, 2048, label="wrapkey", store=True)
        n = int.from_bytes(pub[pkcs11.Attribute.MODULUS], "big")
        e = int.from_bytes(pub[pkcs11.Attribute.PUBLIC_EXPONENT], "big")
    yield rsa.RSAPublicNumbers(e, n).public_key()


def _err(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def test_pkcs11_resources_and_wrap_key(tmp_path: Path, token: rsa.RSAPublicKey) -> None:
    key_admin, pub = admin_material(tmp_path)
    doc = config_doc(tmp_path, pub)
    # SoftHSM2 does RSA-OAEP with SHA-1 only: trustee's "RsaPkcsTest" mechanism exists for it
    doc["plugins"] = [
        {
            "name": "pkcs11",
            "module": MODULE,
            "pin": PIN,
            "lookup_label": "wrapkey",
            "rsa_mechanism": "RsaPkcsTest",
        }
    ]
    cfg = parse_config(doc, str(tmp_path))
    from kbs.config import effective_config

    assert PIN not in str(effective_config(cfg))  # kbs --check redacts the pin
    state = await build_state(cfg)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    url = f"{base}/kbs/v0/pkcs11"
    from .conftest import Kbs

    kbs = Kbs(base, state, key_admin, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            secret = os.urandom(24)
            r = await http.post(f"{url}/resource/default/key/hsm", content=secret)
            assert r.status_code == 401 and _err(r) == "AdminAuthInitialization"
            r = await http.post(
                f"{url}/resource/default/key/hsm", content=secret, headers=kbs.admin_headers()
            )
            assert r.status_code == 200, r.text
            # GET: attestation token and the resource policy with data.plugin == "pkcs11"
            r = await http.get(f"{url}/resource/default/key/hsm")
            assert r.status_code == 401 and _err(r) == "TokenNotFound"
            tee = TeeKeyPair.generate()
            sid, nonce = await handshake(http, base)
            assert (await do_attest(http, base, sid, attest_body(nonce, tee))).status_code == 200
            cookie = {"Cookie": f"kbs-session-id={sid}"}
            r = await http.get(f"{url}/resource/default/key/hsm", headers=cookie)
            assert r.status_code == 401 and _err(r) == "PolicyDeny"
            await state.resource_policy.set(
                b'package policy\nimport rego.v1\ndefault allow := false\nallow if data.plugin == "pkcs11"\n'
            )
            r = await http.get(f"{url}/resource/default/key/hsm", headers=cookie)
            assert r.status_code == 200, r.text
            assert tee.decrypt(r.json()) == secret
            # wrap-key: POST (admin) wraps with the token's public key (RSA-OAEP, SHA-1 here)
            r = await http.post(f"{url}/wrap-key", content=b"kek-material", headers=kbs.admin_headers())
            assert r.status_code == 200 and len(r.content) == 256, r.text
            # GET unwraps in the token (attested caller), answer sealed to the TEE key; a body
            # wrapped here with the public key and that OAEP unwraps the same way
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
            for wrapped in (r.content, token.encrypt(b"local-kek", oaep)):
                r2 = await http.request("GET", f"{url}/wrap-key", content=wrapped, headers=cookie)
                assert r2.status_code == 200, r2.text
                assert tee.decrypt(r2.json()) in (b"kek-material", b"local-kek")
            # DELETE (admin), then the object is gone
            r = await http.delete(f"{url}/resource/default/key/hsm", headers=kbs.admin_headers())
            assert r.status_code == 200
            r = await http.get(f"{url}/resource/default/key/hsm", headers=cookie)
            assert r.status_code == 401 and _err(r) == "PluginInternalError" and "Could not find" in r.text
            r = await http.get(f"{url}/resource/../key/x", headers=cookie)
            assert r.status_code in (401, 404)
            r = await http.put(f"{url}/resource/default/key/hsm", content=b"x", headers=kbs.admin_headers())
            assert r.status_code == 401 and _err(r) == "PluginInternalError"
    finally:
        await server.close()
        for c in state.closers:
            await c()
