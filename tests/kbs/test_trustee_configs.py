"""trustee v0.21.0's own KBS configs (tests/fixtures/trustee/, see its MANIFEST): every one
loads with ``kbs --check``; the ones this KBS can serve start and complete an RCAR flow
(sample TEE) and serve a resource; the others name what stops them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from kbs.app import build_state
from kbs.cli import main as kbs_main
from kbs.config import KbsServerConfig, load_config, parse_config, startup_problems
from kbs.errors import KbsConfigError
from kbs.server import make_app, ssl_context
from kbs.storage import NS_REPOSITORY
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.policies import builtin_policy
from tests.support.kbs import free_port, self_signed

from .test_api import attest_body, do_attest, handshake
from .test_intel_ta import tdx_attest_body

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trustee"
CONFIGS = sorted((FIXTURES / "configs").glob("*.toml"))
#: trustee v0.21.0 ships 28 KBS configs under kbs/test_data/configs, kbs/config and kbs/test
EXPECTED_COUNT = 28
#: the ones this KBS serves (the other two are refused at start by trustee too: no TLS key with
#: insecure_http = false, no admin identity provider); intel_ta ones against a replayed ITA
SERVABLE = {
    "config_kbs-config-intel-trust-authority.toml",
    "config_kubernetes_ita_kbs-config.toml",
    "test_data_configs_intel-ta-1.toml",
    "test_data_configs_intel-ta-2.toml",
    "test_data_configs_intel-ta-3.toml",
    "test_config_external-plugin-attest.toml",
    "test_config_external-plugin-resource-tls.toml",
    "test_config_external-plugin-resource.toml",
    "test_config_external-plugin-tls.toml",
    "test_config_external-plugin.toml",
    "test_test_data_configs_external-plugin-test.toml",
    "config_docker-compose_kbs-config.toml",
    "config_kbs-config-grpc.toml",
    "config_kbs-config.toml",
    "config_kubernetes_base_kbs-config.toml",
    "test_config_kbs.toml",
    "test_config_resource-kbs.toml",
    "test_data_configs_coco-as-builtin-2.toml",
    "test_data_configs_coco-as-grpc-1.toml",
    "test_data_configs_coco-as-grpc-2.toml",
    "test_data_configs_coco-as-grpc-3.toml",
    "test_data_configs_tls-profile-custom-pqc.toml",
    "test_data_configs_tls-profile-custom.toml",
    "test_data_configs_tls-profile-intermediate.toml",
    "test_data_configs_tls-profile-modern.toml",
    "test_data_configs_tls-profile-old.toml",
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
    cfg = FIXTURES / "configs" / "test_data_configs_coco-as-builtin-1.toml"
    r = subprocess.run([sys.executable, "-m", "kbs.cli", "-c", str(cfg), "--check"], capture_output=True,
                       timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["would_start"] is False and "private_key and certificate" in rep["startup_problems"][0]
    # and the server itself refuses to start on it, naming why
    r = subprocess.run([sys.executable, "-m", "kbs.cli", "-c", str(cfg)], capture_output=True, timeout=60,
                       check=False)  # fmt: skip
    assert r.returncode == 1 and b"private_key and certificate" in r.stderr


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
    (w / "echo-plugin-ca.pem").write_bytes(ca.public_bytes(pem))


@pytest.fixture(scope="module")
def grpc_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One separate ``grpc-as`` for the ``coco_as_grpc`` configs: (address, its signer certificate)."""
    from .test_split_services import _serve

    tmp = tmp_path_factory.mktemp("grpc-as")
    kp, cp = self_signed(tmp, "as", common_name="grpc-as signer", ca=True)
    (tmp / "as.json").write_text(json.dumps({
        "attestation_token_broker": {"signer": {"key_path": str(kp), "cert_path": str(cp)}},
        "storage_backend": {"storage_type": "Memory"},
        "security": {"dev_verifiers": ["sample"]},  # the tests attest with the unsigned sample TEE
    }))  # fmt: skip
    port = free_port()
    with _serve(tmp, "grpc-as", ["kbs.grpc_as", "-c", str(tmp / "as.json"), "-s", f"127.0.0.1:{port}"], port):
        yield f"http://127.0.0.1:{port}", cp


@pytest.fixture
async def replay_ita() -> AsyncIterator[str]:
    """A local server replaying Intel Trust Authority's documented answers (not the real service)."""
    from .test_intel_ta import API_KEY, ReplayIta

    ita = ReplayIta(api_keys=(API_KEY, "this-is-a-key"))
    srv = TestServer(ita.app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        await srv.close()


def _localise(cfg: KbsServerConfig, tmp: Path, as_addr: str, as_cert: Path, ita: str = "") -> KbsServerConfig:
    """The only changes made to trustee's files: nothing outside the test's directory is read or
    written, and the AS address is the test's ``grpc-as`` (whose certificate stands in for the
    configured trust anchors)."""
    st = cfg.storage
    for attr in ("local_fs_dir", "local_json_dir"):
        if getattr(st, attr).startswith("/"):
            st = replace(st, **{attr: str(tmp / "storage")})
    idps = tuple(
        replace(i, public_key_uri="work/kbs.pem") if (i.public_key_uri or "").startswith("/") else i
        for i in cfg.admin.identity_providers
    )
    tok = cfg.attestation_token
    tok = replace(
        tok,
        trusted_certs_paths=tuple(str(as_cert) if p.startswith("/") else p for p in tok.trusted_certs_paths),
    )
    hs = cfg.http_server
    if hs.private_key and hs.private_key.startswith("/"):
        hs = replace(hs, private_key="work/https.key", certificate="work/https.crt")
    a = cfg.attestation_service
    if a.type == "coco_as_grpc":
        a = replace(a, as_addr=as_addr)
    if a.type == "intel_ta":  # ITA's URLs and the JWK sets: the replay server's
        a = replace(a, ita_base_url=ita, ita_certs_file=f"{ita}/certs")
        tok = replace(tok, trusted_jwk_sets=tuple(f"{ita}/certs" for _ in tok.trusted_jwk_sets))
    return replace(cfg, storage=st, admin=replace(cfg.admin, identity_providers=idps), attestation_token=tok,
                   http_server=hs, attestation_service=a)  # fmt: skip


@pytest.mark.parametrize("name", sorted(SERVABLE))
async def test_servable_trustee_configs_complete_rcar(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grpc_as: tuple[str, Path], replay_ita: str
) -> None:
    # trustee reads the relative ./work/... paths from the working directory: so does this KBS
    monkeypatch.chdir(tmp_path)
    _work_dir(tmp_path)
    cfg = _localise(load_config(str(FIXTURES / "configs" / name)), tmp_path, *grpc_as, ita=replay_ita)
    # the test attests with the unsigned sample TEE: switched on explicitly (off in any config)
    cfg = replace(cfg, security=replace(cfg.security, dev_verifiers=("sample",)))
    ita = cfg.attestation_service.type == "intel_ta"
    if not cfg.http_server.insecure_http:  # the TLS profile is applied (served over plain HTTP below)
        ctx = ssl_context(cfg)
        assert ctx is not None
        want = {"modern": ssl.TLSVersion.TLSv1_3, "old": ssl.TLSVersion.TLSv1_2}.get(
            cfg.http_server.tls_profile
        )
        if cfg.http_server.tls_min_version == "1.3":
            want = ssl.TLSVersion.TLSv1_3
        if want is not None:
            assert ctx.minimum_version == want
    state = await build_state(cfg)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    try:
        secret = os.urandom(16)
        await state.store.set(NS_REPOSITORY, "default/key/trustee", secret)
        await state.resource_policy.set(builtin_policy("allow_all"))
        key = TeeKeyPair.generate()
        async with httpx.AsyncClient(timeout=60) as http:
            sid, nonce = await handshake(http, url, "tdx" if ita else "sample")
            r = await do_attest(
                http, url, sid, tdx_attest_body(nonce, key) if ita else attest_body(nonce, key)
            )
            assert r.status_code == 200, r.text
            token = r.json()["token"]
            hdr = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
            if ita:
                assert hdr["alg"] == "PS384" and hdr["kid"] == "ita-signing-1"
            else:  # a signer with a chain (configured, or the separate AS's) puts x5c in the header
                remote = cfg.attestation_service.type == "coco_as_grpc"
                assert ("x5c" in hdr["jwk"]) == (
                    remote or cfg.attestation_service.signer_cert_path is not None
                )
            r = await http.get(f"{url}/kbs/v0/resource/default/key/trustee",
                               headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
            if "resource" in cfg.plugins:
                assert r.status_code == 200, r.text
                assert key.decrypt(r.json()) == secret
            else:  # no resource plugin listed: trustee has none then, neither does this KBS
                assert r.status_code == 404 and r.json()["type"].endswith("/PluginNotFound")
            if "sample" in cfg.plugins:  # trustee's sample plugin: admin-authorised
                r = await http.get(f"{url}/kbs/v0/sample")
                if cfg.admin.mode == "InsecureAllowAll":
                    assert r.status_code == 200 and r.content == b"sample plugin response"
                else:
                    assert r.status_code == 401 and r.json()["type"].endswith("/AdminAuthInitialization")
    finally:
        await server.close()
        for c in state.closers:
            await c()


async def test_unservable_config_is_refused_at_build(tmp_path: Path) -> None:
    cfg = load_config(str(FIXTURES / "configs" / "test_data_configs_coco-as-builtin-3.toml"))
    with pytest.raises(KbsConfigError, match="needs at least one identity_providers entry"):
        await build_state(cfg)
