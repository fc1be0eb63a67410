"""A trustee-style client exchange written from reference/kbs-protocol.md
(stdlib HTTP + cryptography only; none of the project's client code)
against the real ``kbs`` process, over HTTPS with a trusted EAR signer."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from cryptography.x509.oid import NameOID

from tests.support.kbs import start_kbs


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jcs(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tls_material(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    kp, cp = tmp / "tls.key", tmp / "tls.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))  # fmt: skip
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


class Peer:
    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.cookie: str | None = None

    def req(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes, http.client.HTTPResponse]:  # fmt: skip
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        h = dict(headers or {})
        if self.cookie:
            h["Cookie"] = self.cookie
        data = None if body is None else json.dumps(body).encode()
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        sc = r.getheader("Set-Cookie")
        if sc and sc.startswith("kbs-session-id="):
            self.cookie = sc.split(";")[0]
        c.close()
        return r.status, raw, r


def run_rcar(p: Peer, kind: str) -> tuple[Any, str]:
    if kind == "rsa":
        priv: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nn = priv.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "alg": "RSA-OAEP-256",
            "n": b64u(nn.n.to_bytes(256, "big")),
            "e": b64u(b"\x01\x00\x01"),
        }
    else:
        priv = ec.generate_private_key(ec.SECP256R1())
        en = priv.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
               "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))}  # fmt: skip
    st, raw, _ = p.req("POST", "/kbs/v0/auth", {"version": "0.4.0", "tee": "sample",
                       "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]}})  # fmt: skip
    assert st == 200, raw
    ch = json.loads(raw)
    assert ch["extra-params"] == ""
    nonce = ch["nonce"]
    digest = hashlib.sha384(jcs({"additional-evidence": "", "nonce": nonce, "tee-pubkey": jwk})).digest()
    body = {"runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                             "additional_evidence": ""}}  # fmt: skip
    st, raw, r = p.req("POST", "/kbs/v0/attest", body)
    assert st == 200, raw
    assert r.getheader("Set-Cookie", "").startswith(p.cookie or "?")
    return priv, json.loads(raw)["token"]


def decrypt(priv: Any, doc: dict[str, str]) -> bytes:
    hdr = json.loads(unb64u(doc["protected"]))
    assert hdr["enc"] == "A256GCM"
    if hdr["alg"] == "ECDH-ES+A256KW":
        assert list(hdr) == ["alg", "enc", "epk"] and list(hdr["epk"]) == ["crv", "kty", "x", "y"]
        e = hdr["epk"]
        pub = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64u(e["x"]), "big"),
                                            int.from_bytes(unb64u(e["y"]), "big"), ec.SECP256R1()).public_key()  # fmt: skip
        z = priv.exchange(ec.ECDH(), pub)
        a = b"ECDH-ES+A256KW"
        kek = hashlib.sha256(
            b"\0\0\0\1" + z + len(a).to_bytes(4, "big") + a + b"\0" * 8 + (256).to_bytes(4, "big")
        ).digest()
        cek = aes_key_unwrap(kek, unb64u(doc["encrypted_key"]))
    else:
        assert unb64u(doc["protected"]) == b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}'
        cek = priv.decrypt(unb64u(doc["encrypted_key"]),
                           padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))  # fmt: skip
    # the Rust client rebuilds the AAD from the re-serialized header: it must equal the received one
    rebuilt = b64u(json.dumps(hdr, separators=(",", ":")).encode())
    assert rebuilt == doc["protected"]
    return AESGCM(cek).decrypt(
        unb64u(doc["iv"]), unb64u(doc["ciphertext"]) + unb64u(doc["tag"]), rebuilt.encode()
    )


def test_trustee_style_exchange_over_https(tmp_path: Path) -> None:
    secret = os.urandom(40)
    tls = tls_material(tmp_path)
    with start_kbs(tmp_path, tls=tls, trusted_signer=True, resources={"default/key/k1": secret}) as kbs:
        for kind in ("ec", "rsa"):
            p = Peer(kbs.port, tls[1])
            priv, token = run_rcar(p, kind)
            header = json.loads(unb64u(token.split(".")[0]))
            assert header["alg"] == "ES256" and "x5c" in header["jwk"]
            st, raw, r = p.req("GET", "/kbs/v0/resource/default/key/k1")
            assert st == 200 and r.getheader("Set-Cookie") is None
            assert decrypt(priv, json.loads(raw)) == secret
            # passport mode on a fresh connection, no cookie
            q = Peer(kbs.port, tls[1])
            st, raw, _ = q.req(
                "GET", "/kbs/v0/resource/default/key/k1", headers={"Authorization": f"Bearer {token}"}
            )
            assert st == 200 and decrypt(priv, json.loads(raw)) == secret

        # a token signed by another key (self-consistent jwk header, no trusted x5c) is refused
        other = ec.generate_private_key(ec.SECP256R1())
        n = other.public_key().public_numbers()
        forged_hdr = {"alg": "ES256", "typ": "JWT", "jwk": {"kty": "EC", "crv": "P-256", "alg": "ES256",
                      "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}}  # fmt: skip
        claims = json.loads(unb64u(token.split(".")[1]))
        si = b64u(json.dumps(forged_hdr).encode()) + "." + b64u(json.dumps(claims).encode())
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        rr, ss = decode_dss_signature(other.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
        forged = si + "." + b64u(rr.to_bytes(32, "big") + ss.to_bytes(32, "big"))
        st, raw, _ = Peer(kbs.port, tls[1]).req("GET", "/kbs/v0/resource/default/key/k1",
                                                headers={"Authorization": f"Bearer {forged}"})  # fmt: skip
        assert st == 401
        assert json.loads(raw)["type"].endswith("/TokenVerifierError")
        # a plain-HTTP client cannot talk to the HTTPS listener
        c = http.client.HTTPConnection("127.0.0.1", kbs.port, timeout=5)
        try:
            c.request("GET", "/healthz")
            plain_ok = c.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            plain_ok = False
        assert not plain_ok
