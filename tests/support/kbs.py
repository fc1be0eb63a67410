"""Start our ``kbs`` server for tests: a free 127.0.0.1 port, a generated
config (trustee v0.21 format), an Ed25519 admin key and a bearer-JWT admin
token, and helpers to seed resources and policies.

Usage (sync or async tests alike; the server is a real subprocess)::

    from tests.support.kbs import kbs_server  # pytest fixture
    def test_x(kbs_server):
        kbs_server.set_resource("default/key/k1", b"secret")
        kbs_server.set_resource_policy("allow_all")
        ... kbs_server.url ...

or ``with start_kbs(tmp_path, policy="allow_all", resources={...}) as kbs: ...``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from kbs_protocol.jws import sign
from kbs_protocol.policies import builtin_policy

__all__ = [
    "RunningKbs",
    "free_port",
    "kbs_server",
    "make_admin_token",
    "self_signed",
    "start_kbs",
    "write_config",
]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_admin_token(
    key: ed25519.Ed25519PrivateKey, *, role: str = "admin", issuer: str = "tests", audience: str = "KBS",
    lifetime_s: int = 3600, now: int | None = None, **extra: Any,
) -> str:  # fmt: skip
    t = int(time.time()) if now is None else now
    claims = {"iss": issuer, "sub": "admin", "aud": [audience], "role": role, "iat": t, "exp": t + lifetime_s}
    claims.update(extra)
    return sign(claims, key, alg="EdDSA")


def self_signed(
    tmp: Path, stem: str, *, common_name: str, ips: tuple[str, ...] = (), ca: bool = False
) -> tuple[Path, Path]:
    """A fresh P-256 key and a one-day self-signed certificate for it (``ips`` as
    subjectAltNames, ``ca`` a critical BasicConstraints CA=true), written as
    ``<stem>.key`` and ``<stem>.pem`` under ``tmp``; returns (key path, cert path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if ips:
        sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    tmp.mkdir(parents=True, exist_ok=True)
    kp, cp = tmp / f"{stem}.key", tmp / f"{stem}.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))  # fmt: skip
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


def write_config(
    tmp: Path, port: int, admin_pub: Path, *, storage: str = "LocalFs", storage_dir: Path | None = None,
    redis_url: str | None = None, trusted_signer: bool = False, signer_key: bool = False,
    insecure_header_jwk: bool = False, at_rest_key: Path | None = None,
    session_timeout_min: int = 5, token_minutes: int = 5, tls: tuple[Path, Path] | None = None,
    extra_toml: str = "", admin_style: str = "bearer",
    dev_verifiers: tuple[str, ...] = ("sample", "sampledevice"),
) -> Path:  # fmt: skip
    """A trustee-format kbs-config.toml; returns its path.

    Token trust: by default the KBS trusts only its own (ephemeral) EAR signing key, the secure
    setup. ``signer_key``: a configured signer key_path (no certificate), shared by every config
    written in ``tmp`` (replicas). ``trusted_signer``: a signer key with a self-signed certificate,
    also listed in ``trusted_certs_paths`` (tokens carry x5c). ``insecure_header_jwk``: the explicit
    insecure switch (any token is trusted by the jwk in its own header). ``dev_verifiers``: the
    unsigned development verifiers the test attests with (the KBS has none unless asked)."""
    sd = storage_dir or (tmp / "storage")
    http = f'sockets = ["127.0.0.1:{port}"]\n'
    http += (
        f'insecure_http = false\nprivate_key = "{tls[0]}"\ncertificate = "{tls[1]}"\n'
        if tls
        else "insecure_http = true\n"
    )
    tok = signer = ""
    if trusted_signer or signer_key:
        kp, cp = tmp / "ear-signer.key", tmp / "ear-signer.pem"
        if not (kp.exists() and cp.exists()):  # replicas in one tmp dir share the signer
            kp, cp = self_signed(tmp, "ear-signer", common_name="test EAR signer")
        signer = f'[attestation_service.attestation_token_broker.signer]\nkey_path = "{kp}"\n'
        if trusted_signer:
            tok += f'trusted_certs_paths = ["{cp}"]\n'
            signer += f'cert_path = "{cp}"\n'
    if insecure_header_jwk:
        tok += "insecure_header_jwk = true\n"
    backends = f'[storage_backend.backends.local_fs]\ndir_path = "{sd}"\n'
    if redis_url:
        backends += f'[storage_backend.backends.redis]\nurl = "{redis_url}"\n'
    if at_rest_key:
        backends += f'[storage_backend.encryption]\nkey_path = "{at_rest_key}"\n'
    if admin_style == "bearer":  # trustee >= v0.21
        admin = f"""[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [ {{ issuer = "tests", audience = "KBS", public_key_uri = "{admin_pub}" }} ]
[admin.authorization.regex_acl]
acls = [ {{ role = "admin", allowed_endpoints = "^/kbs/.+$" }} ]
"""
    elif admin_style == "simple":  # trustee v0.16 - v0.20
        admin = (
            f'[admin]\ntype = "Simple"\n[[admin.personas]]\nid = "admin"\npublic_key_path = "{admin_pub}"\n'
        )
    elif admin_style == "legacy-key":  # trustee <= v0.15
        admin = f'[admin]\nauth_public_key = "{admin_pub}"\ninsecure_api = false\n'
    else:
        raise ValueError(f"unknown admin_style {admin_style!r}")
    text = f"""[http_server]
{http}
{admin}
[attestation_token]
{tok}
[attestation_service]
type = "coco_as_builtin"
timeout = {session_timeout_min}
[attestation_service.attestation_token_broker]
duration_min = {token_minutes}
{signer}
[storage_backend]
storage_type = "{storage}"
{backends}
[[plugins]]
name = "resource"
[security]
dev_verifiers = {json.dumps(list(dev_verifiers))}
{extra_toml}
"""
    cfg = tmp / f"kbs-config-{port}.toml"
    cfg.write_text(text)
    return cfg


@dataclass
class RunningKbs:
    url: str
    port: int
    config_path: Path
    storage_dir: Path
    admin_key: ed25519.Ed25519PrivateKey
    admin_token: str
    admin_token_file: Path
    admin_private_key_file: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    ca_file: Path | None = None
    _extra: dict[str, Any] = field(default_factory=dict)

    def _client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        )
        return httpx.Client(base_url=self.url, timeout=30, verify=verify)

    def admin(self, method: str, path: str, *, content: bytes | None = None, json_body: Any = None,
              token: str | None = None) -> httpx.Response:  # fmt: skip
        with self._client() as c:
            return c.request(method, path, content=content, json=json_body,
                             headers={"Authorization": f"Bearer {token or self.admin_token}"})  # fmt: skip

    def _ok(self, r: httpx.Response, what: str) -> None:
        if r.status_code != 200:
            raise AssertionError(f"KBS {what} answered {r.status_code}: {r.text[:300]}")

    def set_resource(self, path: str, data: bytes) -> None:
        self._ok(self.admin("POST", f"/kbs/v0/resource/{path.strip('/')}", content=data), "set-resource")

    def delete_resource(self, path: str) -> None:
        self._ok(self.admin("DELETE", f"/kbs/v0/resource/{path.strip('/')}"), "delete-resource")

    def set_resource_policy(self, policy: str | bytes) -> None:
        """``policy``: Rego text/bytes, or a built-in name: allow_all, deny_all, affirming, default."""
        if isinstance(policy, str) and policy in ("allow_all", "deny_all", "affirming", "default"):
            rego = builtin_policy(policy)
        else:
            rego = policy.encode() if isinstance(policy, str) else policy
        b = base64.urlsafe_b64encode(rego).rstrip(b"=").decode()
        self._ok(
            self.admin("POST", "/kbs/v0/resource-policy", json_body={"policy": b}), "set-resource-policy"
        )

    def set_attestation_policy(self, rego: str | bytes, policy_id: str = "default_cpu") -> None:
        raw = rego.encode() if isinstance(rego, str) else rego
        body = {
            "type": "rego",
            "policy_id": policy_id,
            "policy": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        }
        self._ok(self.admin("POST", "/kbs/v0/attestation-policy", json_body=body), "set-attestation-policy")

    def set_reference_values(self, values: Mapping[str, Any]) -> None:
        payload = base64.b64encode(json.dumps(dict(values)).encode()).decode()
        body = {"version": "0.1.0", "type": "sample", "payload": payload}
        self._ok(self.admin("POST", "/kbs/v0/reference-value", json_body=body), "reference-value")

    def set_sample_reference_values(self) -> None:
        """The values that make the sample TEE affirming under the default CPU policy (trustee's
        rules: launch_digest, svn, major_version, minimum_minor_version)."""
        self.set_reference_values({"svn": ["1"], "launch_digest": ["abcde"], "major_version": 1,
                                   "minimum_minor_version": 1})  # fmt: skip

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _kbs_cmd() -> list[str]:
    for exe in (Path(sys.executable).parent / "kbs", ROOT / ".venv" / "bin" / "kbs"):
        if exe.exists():  # the kbs installed beside this interpreter first (a wheel's venv)
            return [str(exe)]
    return [sys.executable, "-m", "kbs.cli"]


@contextlib.contextmanager
def start_kbs(
    tmp: Path, *, policy: str | bytes | None = "allow_all", resources: Mapping[str, bytes] | None = None,
    port: int | None = None, startup_timeout: float = 30.0, **config_kw: Any,
) -> Iterator[RunningKbs]:  # fmt: skip
    """Start ``kbs`` as a subprocess; ``config_kw`` goes to :func:`write_config`."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp / "admin.pub"
    if not pub.exists():
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        (tmp / "admin.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    else:  # replicas in one tmp dir share the admin key
        loaded = serialization.load_pem_private_key((tmp / "admin.key").read_bytes(), None)
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
        key = loaded
    token = make_admin_token(key)
    tok_file = tmp / "admin-token"
    tok_file.write_text(token)
    cfg = write_config(tmp, port, pub, **config_kw)
    log_path = tmp / f"kbs-{port}.log"
    log = log_path.open("wb")
    env = dict(os.environ)
    env.setdefault("KBS_LOG_LEVEL", "info")
    tls = config_kw.get("tls")
    scheme = "https" if tls else "http"
    proc = subprocess.Popen(
        [*_kbs_cmd(), "--config-file", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    kbs = RunningKbs(
        url=f"{scheme}://127.0.0.1:{port}", port=port, config_path=cfg,
        storage_dir=config_kw.get("storage_dir") or tmp / "storage", admin_key=key, admin_token=token,
        admin_token_file=tok_file, admin_private_key_file=tmp / "admin.key", log_path=log_path, proc=proc,
        ca_file=tls[1] if tls else None,
    )  # fmt: skip
    try:
        deadline = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kbs exited with {proc.returncode}: {kbs.log_text()[-800:]}")
            try:
                with kbs._client() as c:
                    if c.get("/healthz").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"kbs did not answer /healthz within {startup_timeout}s")
            time.sleep(0.1)
        if policy is not None:
            kbs.set_resource_policy(policy)
        for path, data in (resources or {}).items():
            kbs.set_resource(path, data)
        yield kbs
    finally:
        kbs.stop()
        log.close()


@pytest.fixture
def kbs_server(tmp_path: Path) -> Iterator[RunningKbs]:
    """A running KBS with the allow-all resource policy and no resources."""
    with start_kbs(tmp_path / "kbs") as kbs:
        yield kbs
