"""Test peers for trusted images: gnupg keys, skopeo signing/encryption, cosign-format
signatures and raw registry pushes.

* GPG signatures and JWE-encrypted layers are made by the real tools (gpg,
  skopeo), the way users make them.
* Debian's skopeo 1.9.3 is built without sigstore ("Debian-local change:
  sigstore disabled") and no cosign binary is installed, so cosign signatures
  are made here, following the documented format (reference oci.md §3.4): a
  ``sha256-<hex>.sig`` manifest whose layers are the payload JSON with the
  base64 signature annotation. Fulcio/Rekor material comes from a throwaway CA
  and Rekor key generated here (the real services cannot be reached); that is
  the one thing mocked.
* Provider-wrapped layers (ocicrypt key-provider protocol, CoCo annotation
  packet) are rewrapped from a skopeo JWE image, since skopeo 1.9.3 rejects
  ``provider:`` keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.registry import PASSWORD, USER, RegistryServer

COSIGN_MT = "application/vnd.dev.cosign.simplesigning.v1+json"


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> bytes:
    e = dict(os.environ)
    if env:
        e.update(env)
    cp = subprocess.run(args, capture_output=True, timeout=timeout, env=e)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {cp.stderr.decode(errors='replace')[-600:]}")
    return cp.stdout


@dataclass
class GpgKey:
    env: dict[str, str]
    fpr: str
    pub: Path  # binary export
    pub_asc: Path  # armored export


def gpg_key(home: Path, email: str = "trust@example.invalid", expire: str = "never") -> GpgKey:
    home.mkdir(mode=0o700, parents=True)
    env = {"GNUPGHOME": str(home)}
    run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", email, "ed25519", "sign", expire], env)
    out = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env).decode()
    fpr = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))
    pub = home.parent / f"{home.name}.gpg"
    pub.write_bytes(run(["gpg", "--batch", "--export", fpr], env))
    asc = home.parent / f"{home.name}.asc"
    asc.write_bytes(run(["gpg", "--batch", "--armor", "--export", fpr], env))
    return GpgKey(env, fpr, pub, asc)


def skopeo_copy(
    reg: RegistryServer, src: str, repo_tag: str, extra: list[str], env: dict[str, str] | None = None
) -> None:
    run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"{USER}:{PASSWORD}",
            *extra,
            src,
            f"docker://{reg.host}/{repo_tag}",
        ],
        env,
    )


def lookaside_dirs(tmp: Path, attachments: bool = False) -> tuple[Path, Path, Path]:
    """(signature store, registries.d for skopeo to write, registries.d for the puller)."""
    store = tmp / "sigstore"
    store.mkdir()
    w, r = tmp / "rd-write", tmp / "rd-read"
    w.mkdir()
    r.mkdir()
    (w / "default.yaml").write_text(
        f"default-docker:\n  lookaside: file://{store}\n  lookaside-staging: file://{store}\n"
    )
    extra = "  use-sigstore-attachments: true\n" if attachments else ""
    (r / "default.yaml").write_text(f"default-docker:\n  lookaside: file://{store}\n{extra}")
    return store, w, r


# ---------------------------------------------------------------------- raw registry access
def _req(
    reg: RegistryServer,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    h = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    h.update(headers or {})
    url = path if path.startswith("http") else f"{reg.url}{path}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_manifest(reg: RegistryServer, repo: str, ref: str) -> bytes:
    st, _, body = _req(
        reg,
        "GET",
        f"/v2/{repo}/manifests/{ref}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert st == 200, st
    return body


def get_blob(reg: RegistryServer, repo: str, digest: str) -> bytes:
    st, _, body = _req(reg, "GET", f"/v2/{repo}/blobs/{digest}")
    assert st == 200, st
    return body


def push_blob(reg: RegistryServer, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    st, hdrs, _ = _req(reg, "POST", f"/v2/{repo}/blobs/uploads/", b"")
    assert st == 202, st
    loc = hdrs.get("Location") or hdrs["location"]
    if not loc.startswith("http"):
        loc = f"{reg.url}{loc}"
    sep = "&" if "?" in loc else "?"
    st, _, _ = _req(
        reg, "PUT", f"{loc}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"}
    )
    assert st == 201, st
    return {"digest": digest, "size": len(data)}


def push_manifest(reg: RegistryServer, repo: str, ref: str, manifest: dict[str, Any]) -> str:
    body = json.dumps(manifest).encode()
    st, _, err = _req(
        reg,
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        body,
        {"Content-Type": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")},
    )
    assert st == 201, (st, err[:300])
    return "sha256:" + hashlib.sha256(body).hexdigest()


# ---------------------------------------------------------------------- cosign
def cosign_payload(docker_reference: str, digest: str, optional: Any = None) -> bytes:
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": optional,
        }
    ).encode()


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pub_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cosign_layer(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    cert: bytes | None = None,
    chain: bytes | None = None,
    bundle: bytes | None = None,
) -> tuple[dict[str, str], bytes]:
    sig = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    ann = {"dev.cosignproject.cosign/signature": base64.b64encode(sig).decode()}
    if cert is not None:
        ann["dev.sigstore.cosign/certificate"] = cert.decode()
    if chain is not None:
        ann["dev.sigstore.cosign/chain"] = chain.decode()
    if bundle is not None:
        ann["dev.sigstore.cosign/bundle"] = bundle.decode()
    return ann, sig


def push_cosign(
    reg: RegistryServer, repo: str, digest: str, layers: list[tuple[bytes, dict[str, str]]]
) -> None:
    cfg = push_blob(reg, repo, b"{}")
    descs = []
    for payload, ann in layers:
        d = push_blob(reg, repo, payload)
        descs.append({"mediaType": COSIGN_MT, **d, "annotations": ann})
    man = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": descs,
    }
    push_manifest(reg, repo, digest.replace(":", "-") + ".sig", man)


def rekor_bundle(
    rekor: ec.EllipticCurvePrivateKey,
    sig: bytes,
    payload: bytes,
    signer_pem: bytes,
    integrated_time: int,
    *,
    tamper_hash: bool = False,
) -> bytes:
    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {
                "hash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload + (b"x" if tamper_hash else b"")).hexdigest(),
                }
            },
            "signature": {
                "content": base64.b64encode(sig).decode(),
                "publicKey": {"content": base64.b64encode(signer_pem).decode()},
            },
        },
    }
    spki = rekor.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    p = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "integratedTime": integrated_time,
        "logIndex": 42,
        "logID": hashlib.sha256(spki).hexdigest(),
    }
    set_sig = rekor.sign(rfc8785.dumps(p), ec.ECDSA(hashes.SHA256()))
    return json.dumps({"SignedEntryTimestamp": base64.b64encode(set_sig).decode(), "Payload": p}).encode()


@dataclass
class FakeFulcio:
    """A throwaway CA that issues Fulcio-shaped code-signing certificates (the real Fulcio is unreachable)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> FakeFulcio:
        key = ec_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, "sigstore"),
            ]
        )
        now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        signer: ec.EllipticCurvePrivateKey,
        email: str,
        issuer: str,
        not_before: dt.datetime,
        minutes: int = 10,
        *,
        code_signing: bool = True,
    ) -> bytes:
        der_issuer = b"\x0c" + bytes([len(issuer)]) + issuer.encode()
        eku = [ExtendedKeyUsageOID.CODE_SIGNING] if code_signing else [ExtendedKeyUsageOID.SERVER_AUTH]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(signer.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + dt.timedelta(minutes=minutes))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), issuer.encode()),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), der_issuer),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
