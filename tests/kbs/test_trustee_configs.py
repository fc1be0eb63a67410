"""trustee v0.21.0's own KBS configs (tests/fixtures/trustee/, see its MANIFEST): every one
loads with ``kbs --check``; the ones this KBS can serve start and complete an RCAR flow
(sample TEE) and serve a resource; the others name what stops them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from kbs.cli import main as kbs_main
from kbs.config import load_config, parse_config, startup_problems
from kbs.errors import ConfigError
from kbs.server import build_state, make_app
from kbs.storage import NS_REPOSITORY
from kbs_client.policies import builtin_policy
from kbs_client.tee_key import TeeKeyPair

from .test_api import attest_body, do_attest, handshake

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trustee"
CONFIGS = sorted((FIXTURES / "configs").glob("*.toml"))
#: trustee v0.21.0 ships 28 KBS configs under kbs/test_data/configs, kbs/config and kbs/test
EXPECTED_COUNT = 28
#: the ones this KBS serves today (the rest need coco_as_grpc, intel_ta, the external or sample
#: plugin, a remote RVPS, or are refused at start by trustee too)
SERVABLE = {
    "config_kbs-config.toml",
    "config_kubernetes_base_kbs-config.toml",
    "test_config_kbs.toml",
    "test_config_resource-kbs.toml",
    "test_data_configs_coco-as-builtin-2.toml",
}


def test_manifest_lists_every_fixture_with_its_hash() -> None:
    rows = [
        ln.split("\t") for ln in (FIXTURES / "MANIFEST").read_text().splitlines() if not ln.startswith("#")
    ]
    assert len(rows) == len(CONFIGS) == EXPECTED_COUNT
    for local, upstream, digest in rows:
        assert upstream.startswith("kbs/") and upstream.endswith(".toml")
        assert hashlib.sha256((FIXTURES / local).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_trustee_config_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kbs_main(["--config-file", str(path), "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["would_start"] == (path.name in SERVABLE), report["startup_problems"]
    assert report["config"]["http_server"]["sockets"]
    # secrets are not echoed
    assert "tBfd5kKX2x9ahbodKV1" not in json.dumps(report)


def test_check_reads_trustee_spellings() -> None:
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_coco-as-builtin-1.toml"))
    assert c.storage.storage_type == "LocalJson"  # "local_json"
    assert c.storage.local_json_dir == "/opt/confidential-containers/trustee"  # file_dir_path honoured
    assert (c.attestation_service.rvps_type, c.attestation_service.rvps_address) == (
        "GrpcRemote",
        "http://127.0.0.1:50003",
    )
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_coco-as-builtin-2.toml"))
    assert c.storage.session_storage_type == "Memory"  # top-level key, "memory"
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_coco-as-grpc-1.toml"))
    a = c.attestation_service
    assert (a.type, a.as_addr, a.pool_size, a.timeout_min) == (
        "coco_as_grpc",
        "http://127.0.0.1:50001",
        100,
        600,
    )
    assert [p.name for p in c.plugin_configs] == ["sample", "resource"]
    assert c.plugin_configs[0].options == {"item": "value1"}
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_intel-ta-1.toml"))
    assert c.attestation_service.ita_allow_unmatched_policy is True and "this-is-a-key" not in repr(c)
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_tls-profile-custom-pqc.toml"))
    assert c.http_server.tls_groups == "X25519MLKEM768:X25519:secp256r1"
    c = load_config(str(FIXTURES / "configs" / "test_data_configs_coco-as-builtin-3.toml"))
    assert startup_problems(c) == [
        "admin: AuthenticatedAuthorization needs at least one identity_providers entry"
    ]


def test_variant_names_and_aliases(tmp_path: Path) -> None:
    base = {"http_server": {"insecure_http": True}, "admin": {"authorization_mode": "DenyAll"}}
    for spelling, canon in (("CoCoASBuiltIn", "coco_as_builtin"), ("CoCoASGrpc", "coco_as_grpc"),
                            ("IntelTA", "intel_ta")):  # fmt: skip
        extra = {"base_url": "u", "api_key": "k", "certs_file": "f"} if canon == "intel_ta" else {}
        c = parse_config({**base, "attestation_service": {"type": spelling, **extra}})
        assert c.attestation_service.type == canon
    for spelling, canon in (("postgres", "Postgres"), ("redis", "Redis"), ("local_fs", "LocalFs")):
        c = parse_config({**base, "storage_backend": {"storage_type": spelling}})
        assert c.storage.storage_type == canon
    # a leftover key is a warning, not an error (trustee ignores it)
    c = parse_config({**base, "attestation_token": {"insecure_key": True}, "bogus": 1})
    assert any("insecure_key" in w for w in c.warnings) and any("config.bogus" in w for w in c.warnings)
    assert c.attestation_token.insecure_header_jwk is False


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "kbs-config.toml"
    p.write_text(text)
    return p


def test_check_errors_name_the_key_and_strict_fails_on_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = '[http_server]\ninsecure_http = true\n[admin]\nauthorization_mode = "DenyAll"\n'
    p = _write(tmp_path, good + '[storage_backend]\nstorage_type = "Mongo"\n')
    assert kbs_main(["-c", str(p), "--check"]) == 1
    assert "storage_backend.storage_type 'Mongo'" in capsys.readouterr().err
    p = _write(tmp_path, good + '[attestation_service]\ntype = "coco_as_builtin"\ntimeout = "five"\n')
    assert kbs_main(["-c", str(p), "--check"]) == 1
    assert "attestation_service.timeout" in capsys.readouterr().err
    p = _write(tmp_path, good + "[attestation_token]\nfrobnicate = 1\n")
    assert kbs_main(["-c", str(p), "--check"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["warnings"] == [
        "attestation_token.frobnicate is not a key this KBS reads: ignored"
    ]
    assert kbs_main(["-c", str(p), "--check", "--strict"]) == 1
    assert "strict" in capsys.readouterr().err
    p = _write(tmp_path, good)
    assert kbs_main(["-c", str(p), "--check", "--strict"]) == 0


def test_check_console_script_subprocess(tmp_path: Path) -> None:
    cfg = FIXTURES / "configs" / "test_data_configs_coco-as-grpc-3.toml"
    r = subprocess.run([sys.executable, "-m", "kbs.cli", "-c", str(cfg), "--check"], capture_output=True,
                       timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["would_start"] is False and "coco_as_grpc" in rep["startup_problems"][0]
    # and the server itself refuses to start on it, naming why
    r = subprocess.run([sys.executable, "-m", "kbs.cli", "-c", str(cfg)], capture_output=True, timeout=60,
                       check=False)  # fmt: skip
    assert r.returncode == 1 and b"coco_as_grpc" in r.stderr


def _work_dir(tmp: Path) -> None:
    """trustee's kbs/test Makefile material under ./work: TLS pair, token signer with a CA chain,
    the admin public key."""
    w = tmp / "work"
    w.mkdir()
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, ikey: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:  # fmt: skip
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(ikey, hashes.SHA256())
        )

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())  # fmt: skip

    ca_key, tok_key, tls_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("test CA", ca_key, "test CA", ca_key, True)
    tok = cert("token signer", tok_key, "test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (w / "ca-cert.pem").write_bytes(ca.public_bytes(pem))
    (w / "token.key").write_bytes(pem_key(tok_key))
    (w / "token-cert-chain.pem").write_bytes(tok.public_bytes(pem) + ca.public_bytes(pem))
    (w / "https.key").write_bytes(pem_key(tls_key))
    (w / "https.crt").write_bytes(cert("localhost", tls_key, "test CA", ca_key, False).public_bytes(pem))
    admin = ed25519.Ed25519PrivateKey.generate()
    (w / "kbs.pem").write_bytes(
        admin.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (w / "attestation-service" / "tpm_trusted_keys").mkdir(parents=True)


@pytest.mark.parametrize("name", sorted(SERVABLE))
async def test_servable_trustee_configs_complete_rcar(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trustee reads the relative ./work/... paths from the working directory: so does this KBS
    monkeypatch.chdir(tmp_path)
    _work_dir(tmp_path)
    cfg = load_config(str(FIXTURES / "configs" / name))
    st = cfg.storage
    # the only changes: nothing outside the test's directory is read or written
    if st.local_fs_dir.startswith("/opt/"):
        cfg = replace(cfg, storage=replace(st, local_fs_dir=str(tmp_path / "storage")))
    idps = tuple(
        replace(i, public_key_uri="work/kbs.pem") if (i.public_key_uri or "").startswith("/") else i
        for i in cfg.admin.identity_providers
    )
    cfg = replace(cfg, admin=replace(cfg.admin, identity_providers=idps))
    # the test attests with the unsigned sample TEE: switched on explicitly (off in any config)
    cfg = replace(cfg, security=replace(cfg.security, dev_verifiers=("sample",)))
    state = await build_state(cfg)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    try:
        secret = os.urandom(16)
        await state.store.set(NS_REPOSITORY, "default/key/trustee", secret)
        await state.resource_policy.set(builtin_policy("allow_all"))
        key = TeeKeyPair.generate()
        async with httpx.AsyncClient(timeout=30) as http:
            sid, nonce = await handshake(http, url)
            r = await do_attest(http, url, sid, attest_body(nonce, key))
            assert r.status_code == 200, r.text
            token = r.json()["token"]
            hdr = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
            # a configured signer with a chain puts x5c in the header (trusted via trusted_certs_paths)
            assert ("x5c" in hdr["jwk"]) == (cfg.attestation_service.signer_cert_path is not None)
            r = await http.get(f"{url}/kbs/v0/resource/default/key/trustee",
                               headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
            if "resource" in cfg.plugins:
                assert r.status_code == 200, r.text
                assert key.decrypt(r.json()) == secret
            else:  # no [[plugins]]: trustee has no resource plugin then, neither does this KBS
                assert r.status_code == 404 and r.json()["type"].endswith("/PluginNotFound")
    finally:
        await server.close()
        for c in state.closers:
            await c()


async def test_unservable_config_is_refused_at_build(tmp_path: Path) -> None:
    cfg = load_config(str(FIXTURES / "configs" / "test_config_external-plugin.toml"))
    with pytest.raises(ConfigError, match="plugins: external is not served"):
        await build_state(cfg)
