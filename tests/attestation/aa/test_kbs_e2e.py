"""GetToken("kbs") end to end: attestation-agent (process, ttRPC) against the
reference KBS (process, HTTP and HTTPS), then a resource fetched with the
returned token and decrypted with the returned TEE key."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx

from coco_rpc.protos import attestation_agent_pb2 as pb
from kbs_client.tee_key import TeeKeyPair
from tests.support.aa import AaProcess, start_aa
from tests.support.kbs import self_signed, start_kbs

SECRET = b"resource bytes only an attested guest may read"
INITDATA = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = "x"\n'


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _token(aa: AaProcess) -> dict[str, str]:
    code, msg, out = aa.call("GetToken", pb.GetTokenRequest(TokenType="kbs").SerializeToString(), timeout=60)
    assert code == 0, f"{msg}\n{aa.log()[-2000:]}"
    doc = json.loads(pb.GetTokenResponse.FromString(out).Token)
    assert set(doc) == {"token", "tee_keypair"}
    return doc


def _fetch(url: str, doc: dict[str, str], verify: Any = True) -> bytes:
    r = httpx.get(
        f"{url}/kbs/v0/resource/default/key/k1",
        headers={"Authorization": f"Bearer {doc['token']}"},
        verify=verify,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return TeeKeyPair.from_pem(doc["tee_keypair"]).decrypt(r.json())


def test_get_token_and_use_it(tmp_path: Path) -> None:
    with (
        start_kbs(tmp_path / "kbs", resources={"default/key/k1": SECRET}) as kbs,
        start_aa(tmp_path / "aa", kbs_url=kbs.url) as aa,
    ):
        doc = _token(aa)
        assert _fetch(kbs.url, doc) == SECRET
        # a second call is a fresh handshake with a fresh key
        doc2 = _token(aa)
        assert doc2["tee_keypair"] != doc["tee_keypair"]


def test_composite_with_sampledevice_and_initdata(tmp_path: Path) -> None:
    (tmp_path / "initdata.toml").write_bytes(INITDATA)
    cfg = '[token_configs.kbs]\nurl = "{url}"\ntee_key_algorithm = "RSA-OAEP-256"\n'
    with start_kbs(tmp_path / "kbs", resources={"default/key/k1": SECRET}) as kbs:
        aa_cm = start_aa(
            tmp_path / "aa",
            config_toml=cfg.format(url=kbs.url),
            args=["-t", str(tmp_path / "initdata.toml")],
            env={"ENABLE_SAMPLE_DEVICE": "1"},
        )
        with aa_cm as aa:
            code, _, out = aa.call("GetAdditionalTees")
            assert code == 0
            assert list(pb.GetAdditionalTeesResponse.FromString(out).additional_tees) == ["sampledevice"]
            doc = _token(aa)
            assert doc["tee_keypair"].startswith("-----BEGIN RSA PRIVATE KEY-----")
            assert _fetch(kbs.url, doc) == SECRET
            submods = _claims(doc["token"])["submods"]
            # the KBS saw the init-data (its digest becomes a claim) and the device evidence
            cpu = submods["cpu0"]["ear.veraison.annotated-evidence"]
            # as trustee: the sample verifier's init_data (base64 of the digest) at the top level only
            assert cpu["init_data"] == base64.b64encode(hashlib.sha384(INITDATA).digest()).decode()
            assert "init_data" not in cpu["sample"]
            assert set(submods) == {"cpu0", "gpu0"}
            assert "sampledevice" in submods["gpu0"]["ear.veraison.annotated-evidence"]


def test_https_kbs_with_cert_from_config(tmp_path: Path) -> None:
    kp, cp = self_signed(tmp_path / "tls", "tls", common_name="kbs test", ips=("127.0.0.1",), ca=True)
    with start_kbs(tmp_path / "kbs", resources={"default/key/k1": SECRET}, tls=(kp, cp)) as kbs:
        pem = cp.read_text().replace("\n", "\\n")
        cfg = f'[token_configs.kbs]\nurl = "{kbs.url}"\ncert = "{pem}"\n'
        with start_aa(tmp_path / "aa", config_toml=cfg) as aa:
            doc = _token(aa)
            assert _fetch(kbs.url, doc, verify=ssl.create_default_context(cafile=str(cp))) == SECRET
        # without the cert the KBS's certificate is not trusted
        with start_aa(tmp_path / "aa2", kbs_url=kbs.url) as aa2:
            code, msg, _ = aa2.call(
                "GetToken", pb.GetTokenRequest(TokenType="kbs").SerializeToString(), timeout=90
            )
            assert code == 13 and "AA-KBC get token failed" in msg
