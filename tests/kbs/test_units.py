"""Unit tests: config parsing, storage backends, EAR tiers and token checks, admin auth."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kbs import storage as storage_mod
from kbs.admin_auth import AdminAuthorizer
from kbs.config import AdminConfig, IdentityProvider, RoleAcl, load_config, parse_config
from kbs.ear import Appraisal, EarBroker, TokenVerifier, ear_status, extract_tee_pubkey, tier
from kbs.errors import AdminAccessDenied, KbsConfigError, StorageError, TokenVerifierError
from kbs.jwks import load_jwk_set
from kbs.storage import EncryptedStore, LocalFsStore, MemoryStore
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jws import sign

from .conftest import admin_material, config_doc

# --- config -----------------------------------------------------------------------------------


def test_trustee_sample_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "kbs-config.toml"
    p.write_text(
        """
[http_server]
sockets = ["0.0.0.0:8080"]
insecure_http = true
[admin]
authorization_mode = "InsecureAllowAll"
[attestation_token]
insecure_header_jwk = true
[attestation_service]
type = "coco_as_builtin"
work_dir = "/opt/confidential-containers/attestation-service"
[attestation_service.attestation_token_broker]
type = "Ear"
duration_min = 5
[attestation_service.rvps_config]
type = "BuiltIn"
[storage_backend]
storage_type = "LocalFs"
[storage_backend.backends.local_fs]
dir_path = "/tmp/x"
[[plugins]]
name = "resource"
"""
    )
    cfg = load_config(str(p))
    assert cfg.http_server.sockets == ("0.0.0.0:8080",) and cfg.admin.mode == "InsecureAllowAll"
    assert cfg.storage.storage_type == "LocalFs" and cfg.storage.local_fs_dir == "/tmp/x"
    assert cfg.plugins == ("resource",) and cfg.attestation_service.timeout_min == 5


@pytest.mark.parametrize(
    ("mutate", "msg"),
    [
        (lambda d: d.pop("admin"), r"\[admin\] section is required"),
        (lambda d: d.pop("http_server"), r"\[http_server\]"),
        (lambda d: d["admin"].update(type="Simple", authorization_mode="DenyAll"), "personas"),
        (lambda d: d["admin"].update(bogus=1), "unknown field"),
        # these load in trustee too and are refused at start: tests/kbs/test_trustee_configs.py
        (lambda d: d["storage_backend"].update(storage_type="postgresql"), "storage_type 'postgresql'"),
        (lambda d: d.update(plugins=[{"name": "nebula"}]), "plugins.name 'nebula'"),
        (lambda d: d["attestation_service"].update(type="intel"), "attestation_service.type 'intel'"),
        (
            lambda d: d["admin"]["authorization"]["regex_acl"]["acls"].append(
                {"role": "x", "allowed_endpoints": "/kbs"}
            ),
            "anchored",
        ),
    ],
)
def test_bad_configs(tmp_path: Path, mutate: Any, msg: str) -> None:
    _, pub = admin_material(tmp_path)
    doc = config_doc(tmp_path, pub)
    mutate(doc)
    with pytest.raises(KbsConfigError, match=msg):
        parse_config(doc)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KbsConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "bad.toml").write_text("[[[")
    with pytest.raises(KbsConfigError, match="does not parse"):
        load_config(str(tmp_path / "bad.toml"))
    # JSON configs are as strict as TOML ones: a repeated security setting is an error, not "last wins"
    (tmp_path / "dup.json").write_text(
        '{"attestation_token": {"insecure_header_jwk": false, "insecure_header_jwk": true}}'
    )
    with pytest.raises(KbsConfigError, match="does not parse"):
        load_config(str(tmp_path / "dup.json"))
    (tmp_path / "dup.yaml").write_text(
        "attestation_token:\n  insecure_header_jwk: false\n  insecure_header_jwk: true\n"
    )
    with pytest.raises(KbsConfigError, match="duplicate"):
        load_config(str(tmp_path / "dup.yaml"))


# --- storage ----------------------------------------------------------------------------------


class _Clock:
    """Stands in for the ``time`` module inside :mod:`kbs.storage`: expiry without sleeping."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


async def test_localfs_layout_and_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1_764_000_000.0)
    monkeypatch.setattr(storage_mod, "time", clock)
    st = LocalFsStore(str(tmp_path))
    await st.set("repository", "default/key/k1", b"v1")
    assert (tmp_path / "repository" / "default\\x2Fkey\\x2Fk1").read_bytes() == b"v1"
    # trustee's layout is readable as is: a pre-created file is a resource
    (tmp_path / "repository" / "a\\x2Fb\\x2Fc").write_bytes(b"seeded")
    assert await st.get("repository", "a/b/c") == b"seeded"
    assert await st.keys("repository") == ["a/b/c", "default/key/k1"]
    await st.set("kbs_protocol_session", "s1", b"x", ttl_s=0.05)
    clock.t += 0.04
    assert await st.get("kbs_protocol_session", "s1") == b"x"
    clock.t += 0.02
    assert await st.get("kbs_protocol_session", "s1") is None
    assert await st.delete("repository", "a/b/c") and not await st.delete("repository", "a/b/c")
    for bad in ("", "..", ".hidden", "a\0b"):
        with pytest.raises(StorageError):
            await st.get("repository", bad)
    with pytest.raises(StorageError):
        await st.get("../etc", "x")


async def test_encrypted_store() -> None:
    inner = MemoryStore()
    key = os.urandom(32)
    st = EncryptedStore(inner, key, frozenset({"repository"}))
    await st.set("repository", "a/b/c", b"plaintext")
    raw = await inner.get("repository", "a/b/c")
    assert raw is not None and b"plaintext" not in raw
    assert await st.get("repository", "a/b/c") == b"plaintext"
    # moving a sealed value to another key fails authentication
    await inner.set("repository", "x/y/z", raw)
    with pytest.raises(StorageError):
        await st.get("repository", "x/y/z")
    with pytest.raises(StorageError):
        await EncryptedStore(inner, os.urandom(32), frozenset({"repository"})).get("repository", "a/b/c")
    await st.set("kbs", "p", b"clear")
    assert await inner.get("kbs", "p") == b"clear"


# --- EAR --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "t"),
    [(0, "none"), (1, "none"), (-1, "none"), (2, "affirming"), (-31, "affirming"), (32, "warning"),
     (95, "warning"), (96, "contraindicated"), (-128, "contraindicated")],
)  # fmt: skip
def test_tiers(v: int, t: str) -> None:
    assert tier(v) == t


def test_ear_status_and_token_checks() -> None:
    assert ear_status({"hardware": 2, "executables": 3}) == "affirming"
    assert ear_status({"hardware": 2, "executables": 33}) == "warning"
    assert ear_status({}) == "none"
    broker = EarBroker(duration_min=1)
    key = TeeKeyPair.generate()
    sub = {"cpu0": Appraisal({"hardware": 2}, {"runtime_data_claims": {"tee-pubkey": key.public_jwk()}})}
    t0 = 1_764_000_000.9  # fixed issue time; the fraction is truncated in iat/exp as trustee does
    tok = broker.issue(sub, now=t0)
    v = TokenVerifier(insecure_header_jwk=True)
    claims = v.verify(tok, now=t0)
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    assert extract_tee_pubkey(claims).to_jwk() == key.public_jwk()
    assert extract_tee_pubkey({"tee-pubkey": key.public_jwk()}).to_jwk() == key.public_jwk()
    with pytest.raises(TokenVerifierError):
        extract_tee_pubkey({"nothing": 1})
    # expiry: 60 s leeway, then refused
    assert claims["exp"] == int(t0) + 60
    assert v.verify(tok, now=int(t0) + 60 + 60)
    with pytest.raises(TokenVerifierError, match="expired"):
        v.verify(tok, now=int(t0) + 60 + 61)
    # without trust material the verifier refuses to exist; with an unrelated cert, tokens fail
    with pytest.raises(KbsConfigError):
        TokenVerifier()
    # the built-in AS's own key is trust material: its tokens verify without x5c, others do not
    own = TokenVerifier(own_keys=[broker.key.public_key()])
    assert own.verify(tok, now=t0)["iss"] == "CoCo-Attestation-Service"
    with pytest.raises(TokenVerifierError, match="x5c"):
        own.verify(EarBroker().issue(sub, now=t0), now=t0)
    import tempfile

    from tests.support.kbs import self_signed

    with tempfile.TemporaryDirectory() as d:
        kp, cp = self_signed(Path(d), "ear-signer", common_name="test EAR signer")
        strict = TokenVerifier.from_config([str(cp)], [], False)
        with pytest.raises(TokenVerifierError, match="x5c"):
            strict.verify(tok, now=t0)  # no x5c
        good = EarBroker.from_files(str(kp), str(cp)).issue(sub)
        assert strict.verify(good)["iss"] == "CoCo-Attestation-Service"
        # a tampered payload fails the signature
        h, p, s = good.split(".")
        with pytest.raises(TokenVerifierError):
            strict.verify(h + "." + p[:-2] + ("A" if p[-2] != "A" else "B") + p[-1] + "." + s)
    with pytest.raises(KbsConfigError):
        EarBroker(ec.generate_private_key(ec.SECP384R1()))


# --- admin auth -------------------------------------------------------------------------------


def _pem(k: Any) -> str:
    return (
        k.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_admin_auth_ec_idp_and_modes() -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    cfg = AdminConfig(
        mode="AuthenticatedAuthorization",
        identity_providers=(IdentityProvider(public_key_uri=_pem(k)),),
        acls=(RoleAcl("ops", r"^/kbs/v0/resource/default/.+$"),),
    )
    a = AdminAuthorizer(cfg)
    now = int(time.time())
    tok = sign({"role": "ops", "exp": now + 60}, k, alg="ES256")
    assert a.check("/kbs/v0/resource/default/a/b", f"Bearer {tok}") == "ops"
    with pytest.raises(AdminAccessDenied, match="may not access"):
        a.check("/kbs/v0/resource/other/a/b", f"Bearer {tok}")
    with pytest.raises(AdminAccessDenied, match="exp"):
        a.check(
            "/kbs/v0/resource/default/a/b",
            f"Bearer {sign({'role': 'ops', 'exp': str(now + 60)}, k, alg='ES256')}",
        )
    with pytest.raises(AdminAccessDenied):
        a.check(
            "/kbs/v0/resource/default/a/b",
            f"Bearer {sign({'role': 'ops', 'exp': now + 60}, ed25519.Ed25519PrivateKey.generate(), alg='EdDSA')}",
        )
    assert AdminAuthorizer(AdminConfig(mode="InsecureAllowAll")).check("/kbs/v0/x", None) == "insecure"
    with pytest.raises(AdminAccessDenied):
        AdminAuthorizer(AdminConfig(mode="DenyAll")).check("/kbs/v0/x", f"Bearer {tok}")


# --- robustness of /attest parsing --------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=16),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=10,
)


def _service() -> Any:
    from kbs.attestation_service import AttestationService
    from kbs.policy import AttestationPolicies
    from kbs.rvps import ReferenceValues
    from kbs.verifiers import VerifierRegistry

    store = MemoryStore()
    return AttestationService(
        VerifierRegistry(), EarBroker(), AttestationPolicies(store), ReferenceValues(store)
    )


_SERVICE = _service()


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "runtime-data": st.fixed_dictionaries(
                {}, optional={"nonce": _json | st.just("N"), "tee-pubkey": _json}
            ),
            "tee-evidence": st.fixed_dictionaries(
                {}, optional={"primary_evidence": _json, "additional_evidence": _json | st.just("")}
            ),
            "init-data": _json,
        },
    )
)
async def test_attest_garbage_is_attestation_error(body: dict[str, Any]) -> None:
    from kbs.errors import KbsAttestationError

    with pytest.raises(KbsAttestationError):
        await _SERVICE.attest(tee="sample", session_nonce="N", hash_algorithm="sha384",
                              untrusted_body=json.dumps(body).encode())  # fmt: skip


async def test_jwks_kid_token_verification(tmp_path: Path) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    from kbs_protocol.jws import public_key_to_jwk

    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**public_key_to_jwk(k.public_key()), "kid": "ita-1"}]})
    )
    v = TokenVerifier.from_config([], [str(tmp_path / "jwks.json")], False)
    now = int(time.time())
    tok = sign({"exp": now + 60, "tee-pubkey": {}}, k, alg="ES256", header={"kid": "ita-1"})
    assert v.verify(tok)["exp"] == now + 60
    other = sign(
        {"exp": now + 60}, ec.generate_private_key(ec.SECP256R1()), alg="ES256", header={"kid": "ita-1"}
    )
    with pytest.raises(TokenVerifierError):
        v.verify(other)
    with pytest.raises(TokenVerifierError):
        v.verify(sign({"exp": now + 60}, k, alg="ES256", header={"kid": "unknown"}))


async def test_reference_values_expire_and_messages_are_strict() -> None:
    import base64

    from kbs.errors import RvpsError
    from kbs.rvps import RV_LIFETIME_S, ReferenceValues

    rv = ReferenceValues(MemoryStore())
    msg = {"version": "0.1.0", "type": "sample", "payload": base64.b64encode(b'{"svn": ["1"]}').decode()}
    t = time.time()
    assert await rv.register(json.dumps(msg).encode(), now=t) == ["svn"]
    assert await rv.get("svn", now=t + 10) == ["1"]
    assert await rv.get("svn", now=t + RV_LIFETIME_S + 1) is None
    assert await rv.all(now=t + RV_LIFETIME_S + 1) == {}
    dup = b'{"version":"0.1.0","version":"0.1.0","type":"sample","payload":""}'
    # as trustee's RVPS: unknown members ignored, version defaults to 0.1.0
    lax = {"type": "sample", "payload": msg["payload"], "extra": 1}
    assert await rv.register(json.dumps(lax).encode(), now=t) == ["svn"]
    for bad in (dup, json.dumps({**msg, "version": "0.2.0"}).encode(), json.dumps({**msg, "type": "in-toto"}).encode(),
                json.dumps({**msg, "payload": base64.b64encode(b"[1]").decode()}).encode(),
                json.dumps({**msg, "payload": base64.b64encode(b'{"svn": NaN}').decode()}).encode()):  # fmt: skip
        with pytest.raises(RvpsError):
            await rv.register(bad)


def test_session_repr_hides_bearer_credentials() -> None:
    from kbs.sessions import Session

    s = Session("ab" * 16, "sample", "nonce", 1.0, token="hdr.SECRET-CLAIMS.sig")
    assert "SECRET" not in repr(s) and "ab" * 16 not in repr(s)
    r = Session.from_bytes(s.to_bytes())  # the stored form (trustee's Attested record) keeps them
    assert (r.id, r.token, r.expires_at) == (s.id, s.token, s.expires_at)


@pytest.mark.parametrize(
    "content",
    [
        b'{"keys": ["not-a-jwk"]}',  # an entry that is not an object
        b'{"keys": [{"kid": "k", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}',  # not a key
        b'{"keys": [], "keys": []}',  # duplicate member
        b'{"keys": []}' + b" " * (1024 * 1024),  # over the size limit
    ],
    ids=["entry", "key", "duplicate", "size"],
)
def test_bad_jwk_sets_are_config_errors(tmp_path: Path, content: bytes) -> None:
    # token-verifier and admin identity-provider JWK sets are read by one loader
    (tmp_path / "jwks.json").write_bytes(content)
    with pytest.raises(KbsConfigError, match="JWK set"):
        load_jwk_set(str(tmp_path / "jwks.json"))
    with pytest.raises(KbsConfigError):
        TokenVerifier.from_config([], [str(tmp_path / "jwks.json")], False)
    idp = IdentityProvider(jwk_set_uri="jwks.json")
    with pytest.raises(KbsConfigError):
        AdminAuthorizer(
            AdminConfig(mode="AuthenticatedAuthorization", identity_providers=(idp,)), base_dir=str(tmp_path)
        )


def test_token_chain_intermediates_must_be_cas(tmp_path: Path) -> None:
    # a trusted CA's end-entity certificate must not be able to act as an intermediate
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool | None) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t0 - dt.timedelta(days=1))
            .not_valid_after(t0 + dt.timedelta(days=1))
        )
        if ca is not None:
            b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key, forged_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("CA", ca_key, "CA", ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    v = TokenVerifier.from_config([str(tmp_path / "ca.pem")], [], False)

    def token(chain: list[x509.Certificate], key: Any) -> str:
        broker = EarBroker(key, cert_chain_der=[c.public_bytes(serialization.Encoding.DER) for c in chain])
        return broker.issue({"cpu0": Appraisal({"hardware": 2}, {})}, now=t0.timestamp())

    for inter_ca in (True, None):
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = cert("inter", inter_key, "CA", ca_key, ca=inter_ca)
        signer = cert("signer", leaf_key, "inter", inter_key, ca=False)
        if inter_ca:
            assert v.verify(token([signer, inter], leaf_key), now=t0.timestamp())["iss"]
        else:
            with pytest.raises(TokenVerifierError, match="chain"):
                v.verify(token([signer, inter], leaf_key), now=t0.timestamp())
    # an ordinary end-entity certificate from the CA, used to sign a forged "signer" certificate
    ee = cert("tls-server", leaf_key, "CA", ca_key, ca=False)
    forged = cert("signer", forged_key, "tls-server", leaf_key, ca=False)
    with pytest.raises(TokenVerifierError, match="chain"):
        v.verify(token([forged, ee], forged_key), now=t0.timestamp())
    assert v.verify(token([ee], leaf_key), now=t0.timestamp())  # signed directly under the CA


def test_metric_label_values_are_escaped() -> None:
    from kbs.metrics import Metrics

    m = Metrics()
    m.counter("c_total", "help")
    m.inc("c_total", x='a\\b"c\nfake 1')
    assert m.render().splitlines()[2] == 'c_total{x="a\\\\b\\"c\\nfake 1"} 1'


async def test_localfs_listing_and_sweeping_read_only_headers(tmp_path: Path) -> None:
    # keys() and the periodic purge look at the TTL header only: a large stored value is not read
    # (they used to read every file whole, and refused to list one over the value limit)
    st = LocalFsStore(str(tmp_path))
    await st.set("repository", "a/b/small", b"v")
    big = tmp_path / "repository" / "a\\x2Fb\\x2Fbig"
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)  # sparse: costs nothing on disk
    assert await st.keys("repository") == ["a/b/big", "a/b/small"]
    assert await st.purge_expired() == 0
    with pytest.raises(StorageError, match="too large"):
        await st.get("repository", "a/b/big")


def test_token_chain_odd_leaf_key_and_expired_anchor(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import dsa
    from cryptography.x509.oid import NameOID

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def cert(key: Any, issuer_key: Any, *, ca: bool, start: dt.datetime, days: int) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA" if ca else "leaf")])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
        return (
            x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )  # fmt: skip

    def token(chain: list[x509.Certificate], key: Any) -> str:
        broker = EarBroker(key, cert_chain_der=[c.public_bytes(serialization.Encoding.DER) for c in chain])
        return broker.issue({"cpu0": Appraisal({"hardware": 2}, {})}, now=t0.timestamp())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert(ca_key, ca_key, ca=True, start=t0 - dt.timedelta(days=1), days=30)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    v = TokenVerifier.from_config([str(tmp_path / "ca.pem")], [], False)
    good = token([cert(leaf_key, ca_key, ca=False, start=t0 - dt.timedelta(days=1), days=2)], leaf_key)
    assert v.verify(good, now=t0.timestamp())
    # a DSA certificate in x5c: a typed refusal, not an AttributeError
    dsa_cert = cert(dsa.generate_private_key(2048), ca_key, ca=False, start=t0 - dt.timedelta(days=1), days=2)
    with pytest.raises(TokenVerifierError):
        v.verify(token([dsa_cert], leaf_key), now=t0.timestamp())
    # a trusted CA that has expired no longer vouches for anything (a leaf valid at that time)
    later = t0 + dt.timedelta(days=40)
    late_leaf = cert(leaf_key, ca_key, ca=False, start=later - dt.timedelta(days=1), days=2)
    with pytest.raises(TokenVerifierError, match="chain"):
        v.verify(token([late_leaf], leaf_key), now=later.timestamp())


async def test_localfs_value_that_looks_like_a_ttl_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a plain value starting with the TTL magic and an expiry in the past used to be read as an
    # expired TTL record (and deleted); TTL records now live apart, so the file's bytes are the value
    clock = _Clock(1_764_000_000.0)
    monkeypatch.setattr(storage_mod, "time", clock)
    st = LocalFsStore(str(tmp_path))
    lookalike = b"KBSTTL1\0" + struct.pack(">d", 1.0) + b"payload"
    await st.set("repository", "a/b/c", lookalike)
    (tmp_path / "repository" / "x\\x2Fy\\x2Fz").write_bytes(lookalike)  # seeded trustee-style
    for key in ("a/b/c", "x/y/z"):
        assert await st.get("repository", key) == lookalike
    assert await st.purge_expired() == 0
    assert await st.keys("repository") == ["a/b/c", "x/y/z"]
    assert (tmp_path / "repository" / "a\\x2Fb\\x2Fc").read_bytes() == lookalike
    # one key switching between plain and TTL storage: the latest write wins, expiry is honoured
    await st.set("repository", "a/b/c", b"short-lived", ttl_s=10)
    assert await st.get("repository", "a/b/c") == b"short-lived"
    clock.t += 11
    assert await st.get("repository", "a/b/c") is None
    assert await st.keys("repository") == ["x/y/z"]
    await st.set("repository", "a/b/c", b"ttl", ttl_s=10)
    await st.set("repository", "a/b/c", b"plain")
    clock.t += 11
    assert await st.get("repository", "a/b/c") == b"plain"
    # expired records are swept without touching plain values; delete removes either kind
    await st.set("kbs_protocol_session", "s1", b"x", ttl_s=1)
    await st.set("kbs_protocol_session", "s2", b"y", ttl_s=100)
    assert await st.keys("kbs_protocol_session") == ["s1", "s2"]
    clock.t += 2
    assert await st.purge_expired() == 1
    assert await st.keys("kbs_protocol_session") == ["s2"]
    assert (
        await st.delete("kbs_protocol_session", "s2") and await st.get("kbs_protocol_session", "s2") is None
    )
    assert await st.get("repository", "x/y/z") == lookalike


async def test_a_malformed_attest_body_tells_the_client_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The internal reason a body is refused goes to the log; every attestation service answers
    trustee's fixed text (a separate AS over gRPC included)."""
    from kbs.attestation_service import ATTEST_FAILED
    from kbs.errors import KbsAttestationError
    from kbs.grpc_api import AsClient, RemoteAttestationService

    client = AsClient("http://127.0.0.1:9")
    try:
        svc = RemoteAttestationService(client)
        with caplog.at_level("WARNING"), pytest.raises(KbsAttestationError) as ei:
            await svc.attest(tee="snp", session_nonce="n", hash_algorithm="sha384", untrusted_body=b"{nope")
        assert ei.value.detail == ATTEST_FAILED and ei.value.variant == "AttestationError"
        assert "not strict JSON" in caplog.text
    finally:
        await client.close()


def test_grpc_as_refuses_base64url_with_foreign_characters() -> None:
    from kbs.grpc_as import _unb64url

    assert _unb64url("aGk", "evidence") == b"hi"
    with pytest.raises(ValueError, match="evidence is not URL-safe base64"):
        _unb64url("a.Gk=", "evidence")  # the lenient decoder dropped "." and answered b"hi"
    with pytest.raises(ValueError, match="evidence is not URL-safe base64"):
        _unb64url("aGk=", "evidence")  # trustee's URL_SAFE_NO_PAD refuses padding


def test_key_and_name_patterns_refuse_a_trailing_newline() -> None:
    """``$`` matches before a final newline: the checks use fullmatch."""
    from kbs.errors import PluginInternalError
    from kbs.nebula_ca_plugin import NebulaCaPlugin
    from kbs.storage import LocalJsonStore

    ok = {"name": "node1", "ip": "10.9.0.2/24", "duration": "8760h", "groups": "kbs,test"}
    assert NebulaCaPlugin._params(ok)[:4] == ["-name", "node1", "-ip", "10.9.0.2/24"]
    for k in ("name", "duration"):
        with pytest.raises(PluginInternalError):
            NebulaCaPlugin._params({**ok, k: ok[k] + "\n"})
    assert LocalJsonStore._key("a/b.c") == "a/b.c"
    with pytest.raises(StorageError, match="invalid storage key"):
        LocalJsonStore._key("a/b.c\n")


@pytest.mark.parametrize(
    ("exc", "code"),
    [(ValueError("bad"), "INVALID_ARGUMENT"), (StorageError("x"), "ABORTED"), (KeyError("x"), "INTERNAL")],
)
async def test_grpc_handler_maps_errors_to_statuses(exc: Exception, code: str) -> None:
    from kbs.grpc_api import make_handler

    class Aborted(Exception):
        pass

    class Msg:
        FromString = SerializeToString = None

    class Ctx:
        async def abort(self, status: Any, details: str) -> None:
            raise Aborted(status.name)

    async def fn(req: Any) -> Any:
        raise exc

    with pytest.raises(Aborted, match=f"^{code}$"):
        await make_handler(fn, Msg, Msg).unary_unary(object(), Ctx())


def test_stored_session_records_are_strict_json_within_a_limit() -> None:
    """Session records come from a store other replicas (and trustee's) share: a record with a
    repeated member, NaN, over the size limit or of the wrong shape is refused with the
    package's typed error, never parsed leniently (json.loads took the last "token")."""
    import asyncio

    from kbs.errors import KbsError
    from kbs.sessions import Session, SessionRecordError, SessionStore

    good = Session("ab" * 16, "sample", "nonce", time.time() + 60, token="t.o.k")
    body = good.to_bytes()
    assert Session.from_bytes(body).token == "t.o.k"
    dup = body.replace(b'"token": "t.o.k"', b'"token": "t.o.k", "token": "other"')
    assert dup != body
    bad = [
        dup,
        b'{"Attested": {"token": "x", "id": "y", "timeout": NaN}}',
        body[:-1] + b" " * (64 * 1024) + b"}",
        b'{"Authed": {"request": [], "challenge": {}, "id": "x", "timeout": "2030-01-01T00:00:00Z"}}',
        b"[]",
    ]
    for raw in bad:
        with pytest.raises(SessionRecordError) as info:
            Session.from_bytes(raw, limit=32 * 1024)
        assert isinstance(info.value, KbsError)
    store = MemoryStore()
    sessions = SessionStore(store, max_record_bytes=32 * 1024)

    async def go() -> list[Session | None]:
        out = []
        for raw in bad:
            await store.set("kbs_protocol_session", good.id, raw)
            out.append(await sessions.get(good.id))
        await store.set("kbs_protocol_session", good.id, body)
        out.append(await sessions.get(good.id))
        return out

    got = asyncio.run(go())
    assert got[:-1] == [None] * len(bad)
    assert got[-1] is not None and got[-1].token == "t.o.k"
