"""A real OCI registry for tests, and real images in it.

* :class:`RegistryServer` starts CNCF distribution (``docker-registry``) on
  127.0.0.1 with a generated config: optional htpasswd auth (bcrypt entries),
  optional TLS with a freshly generated CA, optional token auth (with
  :class:`TokenServer`, a small ES256 JWT issuer). ``stop()`` ends it.
* :func:`layer_tar` builds layer tarballs from entry tuples with ``tarfile``.
* :func:`umoci_image` assembles an OCI layout the way users do (``umoci init/new/
  config`` + ``umoci raw add-layer``, which gzips); :class:`OciLayout` writes a
  layout directly from Python for what umoci cannot make (zstd or plain layers,
  image indexes, hostile manifests).
* :meth:`RegistryServer.push` copies a layout into the registry with ``skopeo``.

Pytest fixtures at the bottom: ``registry`` (htpasswd, plain HTTP, per module),
``tls_registry`` (htpasswd over TLS), ``anon_registry``. Import them in a
conftest: ``from tests.support.registry import registry, tls_registry  # noqa: F401``.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "OciLayout",
    "RegistryServer",
    "TokenServer",
    "free_port",
    "have_tools",
    "layer_tar",
    "make_ca",
    "umoci_image",
]

USER, PASSWORD = "testuser", "testpass"
TOOLS = ("docker-registry", "skopeo", "umoci")


def have_tools(*tools: str) -> str | None:
    """None if every tool is installed, else a skip reason."""
    missing = [t for t in tools or TOOLS if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)} (scripts/install-deps.sh installs them)" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: Sequence[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    cp = subprocess.run(list(args), capture_output=True, timeout=timeout, **kw)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {cp.stderr.decode(errors='replace')[-500:]}")
    return cp


# ---------------------------------------------------------------------- TLS material
def make_ca(dest: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for ``hosts``; returns (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coco-py test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    dest.mkdir(parents=True, exist_ok=True)
    ca_p, cert_p, key_p = dest / "ca.pem", dest / "cert.pem", dest / "key.pem"
    ca_p.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_p, cert_p, key_p


# ---------------------------------------------------------------------- token server
class TokenServer:
    """Bearer token issuer for distribution's ``auth.token`` mode (ES256 JWT, x5c header).

    Anonymous callers get ``pull`` only; ``user:password`` (Basic on the token
    request) gets what it asks for. ``requests`` records (path, has_basic) of each call.
    """

    def __init__(
        self, workdir: Path, *, users: dict[str, str] | None = None, service: str = "test-registry"
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.users = users if users is not None else {USER: PASSWORD}
        self.service = service
        self.issuer = "test-issuer"
        self.requests: list[tuple[str, bool]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                u = urlsplit(self.path)
                q = parse_qs(u.query)
                authz = self.headers.get("Authorization", "")
                outer.requests.append((self.path, authz.startswith("Basic ")))
                user = None
                if authz.startswith("Basic "):
                    raw = base64.b64decode(authz[6:]).decode()
                    name, _, pw = raw.partition(":")
                    if outer.users.get(name) != pw:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                access = []
                for scope in q.get("scope", []):
                    typ, _, rest = scope.partition(":")
                    nm, _, actions = rest.rpartition(":")
                    acts = actions.split(",")
                    if user is None:
                        acts = [a for a in acts if a == "pull"]
                    access.append({"type": typ, "name": nm, "actions": acts})
                tok = outer._jwt(user or "", access)
                body = json.dumps({"token": tok, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    def _jwt(self, sub: str, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        der = self._key.sign(signing.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


# ---------------------------------------------------------------------- registry
@dataclass
class RegistryServer:
    """docker-registry on 127.0.0.1. ``auth``: "htpasswd", "token" or None."""

    workdir: Path
    auth: str | None = "htpasswd"
    tls: bool = False
    users: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD})
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ca_pem: Path | None = None
    token: TokenServer | None = None

    def __post_init__(self) -> None:
        import bcrypt

        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.scheme = "https" if self.tls else "http"
        self.url = f"{self.scheme}://{self.host}"
        root = self.workdir / f"registry-{self.port}"
        root.mkdir(parents=True)
        self.root = root
        http: dict[str, Any] = {"addr": self.host, "secret": "test-not-secret"}
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
            "http": http,
        }
        if self.tls:
            self.ca_pem, cert, key = make_ca(root / "tls")
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        if self.auth == "htpasswd":
            lines = [
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}" for u, p in self.users.items()
            ]
            (root / "htpasswd").write_text("\n".join(lines) + "\n")
            cfg["auth"] = {"htpasswd": {"realm": "test", "path": str(root / "htpasswd")}}
        elif self.auth == "token":
            self.token = TokenServer(root, users=self.users)
            cfg["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.cert_path),
                }
            }
        (root / "config.yml").write_text(json.dumps(cfg))
        self._log = open(root / "log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_up()
        self.authfile = self.workdir / f"auth-{self.port}.json"
        self.authfile.write_text(json.dumps(self.auth_json()))

    def _wait_up(self) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca_pem)) if self.ca_pem else None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=ctx)
                return
            except urllib.error.HTTPError:
                return  # 401: up
            except OSError:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'log').read_text()[-500:]}")

    def auth_json(
        self, user: str = USER, password: str | None = None, key: str | None = None
    ) -> dict[str, Any]:
        pw = self.users.get(user, "") if password is None else password
        enc = base64.b64encode(f"{user}:{pw}".encode()).decode()
        return {"auths": {key or self.host: {"auth": enc}}}

    def push(self, layout_ref: str, repo_tag: str, extra: Sequence[str] = ()) -> None:
        """``skopeo copy oci:<layout_ref> docker://<host>/<repo_tag>``."""
        args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.auth is not None:
            user = next(iter(self.users))
            args += ["--dest-creds", f"{user}:{self.users[user]}"]
        _run([*args, *extra, f"oci:{layout_ref}", f"docker://{self.host}/{repo_tag}"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()
        if self.token is not None:
            self.token.stop()


# ---------------------------------------------------------------------- images
def layer_tar(entries: Sequence[tuple[Any, ...]]) -> bytes:
    """entries: (name, kind, data_or_target, mode[, uid, gid]) with kind file/dir/symlink/hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            name, kind, data, mode = e[:4]
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            ti.mtime = 1700000000
            if len(e) > 4:
                ti.uid, ti.gid = e[4], e[5]
            if kind == "file":
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                ti.linkname = data
            t.addfile(ti)
    return buf.getvalue()


def umoci_image(
    tmp: Path,
    name: str,
    layers: Sequence[bytes],
    *,
    cmd: str = "/bin/app",
    env: Sequence[str] = ("CHECK=1",),
    workdir: str = "/work",
    extra_config: Sequence[str] = (),
) -> str:
    """OCI layout built with umoci (layers gzipped by ``umoci raw add-layer``); returns ``path:tag``."""
    lay = tmp / f"layout-{name}"
    ref = f"{lay}:v1"
    _run(["umoci", "init", "--layout", str(lay)])
    _run(["umoci", "new", "--image", ref])
    cfg = ["umoci", "config", "--image", ref, "--config.cmd", cmd, "--config.workingdir", workdir]
    for e in env:
        cfg += ["--config.env", e]
    _run([*cfg, *extra_config])
    for i, data in enumerate(layers):
        f = tmp / f"{name}-l{i}.tar"
        f.write_bytes(data)
        _run(["umoci", "raw", "add-layer", "--image", ref, str(f)])
        f.unlink()
    return ref


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


class OciLayout:
    """Write an OCI image layout directly (for compressions/shapes umoci does not make)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[dict[str, Any]] = []

    def blob(self, data: bytes) -> dict[str, Any]:
        d = _digest(data)
        (self.path / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
        return {"digest": d, "size": len(data)}

    def layer(self, tar: bytes, compression: str = "gzip") -> tuple[dict[str, Any], str]:
        """Returns (descriptor, diff_id)."""
        if compression == "gzip":
            data = gzip.compress(tar, compresslevel=1, mtime=0)
            mt = "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compression == "zstd":
            import zstandard

            data = zstandard.ZstdCompressor(level=3).compress(tar)
            mt = "application/vnd.oci.image.layer.v1.tar+zstd"
        elif compression == "none":
            data = tar
            mt = "application/vnd.oci.image.layer.v1.tar"
        else:
            raise ValueError(compression)
        return {"mediaType": mt, **self.blob(data)}, _digest(tar)

    def image(
        self,
        layers: Sequence[tuple[bytes, str]],
        *,
        config: dict[str, Any] | None = None,
        arch: str = "amd64",
        tag: str | None = "v1",
        platform_os: str = "linux",
    ) -> dict[str, Any]:
        """Add an image (layers: (tar, compression)); returns its manifest descriptor."""
        descs, diffs = [], []
        for tar, comp in layers:
            d, diff = self.layer(tar, comp)
            descs.append(d)
            diffs.append(diff)
        cfg = {
            "architecture": arch,
            "os": platform_os,
            "config": config if config is not None else {"Cmd": ["/bin/app"], "Env": ["CHECK=1"]},
            "rootfs": {"type": "layers", "diff_ids": diffs},
        }
        cdesc = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **self.blob(json.dumps(cfg).encode()),
        }
        man = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cdesc,
            "layers": descs,
        }
        mdesc: dict[str, Any] = {"mediaType": man["mediaType"], **self.blob(json.dumps(man).encode())}
        mdesc["platform"] = {"os": platform_os, "architecture": arch}
        if tag is not None:
            self.index.append({**mdesc, "annotations": {"org.opencontainers.image.ref.name": tag}})
        self.write_index()
        return mdesc

    def image_index(self, manifests: Sequence[dict[str, Any]], tag: str) -> dict[str, Any]:
        idx = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": list(manifests),
        }
        desc = {"mediaType": idx["mediaType"], **self.blob(json.dumps(idx).encode())}
        self.index.append({**desc, "annotations": {"org.opencontainers.image.ref.name": tag}})
        self.write_index()
        return desc

    def write_index(self) -> None:
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.index}))


# ---------------------------------------------------------------------- fixtures
def _skip_without_tools() -> None:
    reason = have_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """htpasswd-protected registry over plain HTTP (user testuser / testpass)."""
    _skip_without_tools()
    srv = RegistryServer(tmp_path_factory.mktemp("registry"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """htpasswd-protected registry over TLS with a generated CA (``tls_registry.ca_pem``)."""
    _skip_without_tools()
    srv = RegistryServer(tmp_path_factory.mktemp("tlsregistry"), tls=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Registry using Bearer tokens from a local ES256 token server."""
    _skip_without_tools()
    srv = RegistryServer(tmp_path_factory.mktemp("tokregistry"), auth="token")
    yield srv
    srv.stop()
