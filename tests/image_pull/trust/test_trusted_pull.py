"""Trusted pulls against a real docker-registry: images signed by skopeo (GPG simple
signing into a file:// lookaside), encrypted by skopeo (JWE, RSA and EC), cosign
signatures (key-based and keyless with a throwaway Fulcio CA / Rekor key), and
every bad case refused with nothing visible in the bundle or committed in the store.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdh.keyprovider import KbsKeyProvider
from image_pull.errors import DecryptionError, DigestMismatch, PolicyRejected
from image_pull.ocicrypt import IntegrityError, KeyUnavailable, LayerDecrypter, jwe_decrypt, load_private_key
from image_pull.puller import ImagePuller, PullerConfig, PullResult
from image_pull.store import LayerStore, chain_ids
from image_pull.trust import InvalidPolicy, SignatureRejected, TrustPolicy
from tests.image_pull.trust import helpers as h
from tests.support.registry import RegistryServer, have_tools, layer_tar, umoci_image

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown of image files during unpack"),
    pytest.mark.skipif(
        have_tools("docker-registry", "skopeo", "umoci", "gpg", "gpgv", "openssl") is not None,
        reason=str(have_tools("docker-registry", "skopeo", "umoci", "gpg", "gpgv", "openssl")),
    ),
]

PAYLOAD = os.urandom(40_000)
KEK = bytes(range(32))
KEK_URI = "kbs:///default/key/layer-kek"


def layers() -> list[bytes]:
    return [
        layer_tar([("bin", "dir", None, 0o755), ("bin/app", "file", PAYLOAD, 0o755)]),
        layer_tar([("etc", "dir", None, 0o755), ("etc/motd", "file", b"trusted\n", 0o644)]),
    ]


@dataclass
class Env:
    reg: RegistryServer
    tmp: Path
    signer: h.GpgKey
    other: h.GpgKey
    read_d: Path
    rsa_priv: Path
    ec_priv: Path
    cosign_key: Any
    cosign_pub: Path
    fulcio: h.FakeFulcio
    rekor_pub: Path
    refs: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)


def _reencrypt_variant(reg: RegistryServer, src_repo: str, dst_repo: str, mutate: Any) -> None:
    """Copy src_repo:1 to dst_repo:1 through raw blob pushes, letting ``mutate(manifest, blobs)`` edit it."""
    man = json.loads(h.get_manifest(reg, src_repo, "1"))
    blobs = {d["digest"]: h.get_blob(reg, src_repo, d["digest"]) for d in [man["config"], *man["layers"]]}
    mutate(man, blobs)
    for d in [man["config"], *man["layers"]]:
        pushed = h.push_blob(reg, dst_repo, blobs[d["digest"]])
        d["digest"], d["size"] = pushed["digest"], pushed["size"]
    h.push_manifest(reg, dst_repo, "1", man)


@pytest.fixture(scope="module")
def env(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("trust")
    reg = registry
    signer = h.gpg_key(tmp / "signer")
    other = h.gpg_key(tmp / "other", "other@example.invalid")
    _store, write_d, read_d = h.lookaside_dirs(tmp, attachments=True)
    img = umoci_image(tmp, "img", layers())
    img2 = umoci_image(tmp, "img2", [layer_tar([("x", "file", b"another image\n", 0o644)])])
    src, src2 = f"oci:{img}", f"oci:{img2}"
    sign = ["--registries.d", str(write_d), "--sign-by", signer.fpr]
    h.skopeo_copy(reg, src, "t/signed:1", sign, signer.env)
    h.skopeo_copy(reg, src, "t/unsigned:1", [])
    h.skopeo_copy(
        reg, src, "t/wrongid:1", [*sign, "--sign-identity", f"{reg.host}/t/elsewhere:1"], signer.env
    )
    # a valid signature for another manifest, filed under this image's digest
    h.skopeo_copy(
        reg, src, "t/scratch:1", [*sign, "--sign-identity", f"{reg.host}/t/otherdigest:1"], signer.env
    )
    h.skopeo_copy(reg, src2, "t/otherdigest:1", [])
    d_img = "sha256:" + hashlib.sha256(h.get_manifest(reg, "t/scratch", "1")).hexdigest()
    d_img2 = "sha256:" + hashlib.sha256(h.get_manifest(reg, "t/otherdigest", "1")).hexdigest()
    shutil.copytree(
        _store / f"t/scratch@sha256={d_img.split(':')[1]}",
        _store / f"t/otherdigest@sha256={d_img2.split(':')[1]}",
    )

    # encryption by skopeo (JWE): RSA and EC recipients
    rsa_priv, rsa_pub, ec_priv, ec_pub = (tmp / n for n in ("rsa.pem", "rsa.pub", "ec.pem", "ec.pub"))
    h.run(["openssl", "genrsa", "-out", str(rsa_priv), "2048"])
    h.run(["openssl", "rsa", "-in", str(rsa_priv), "-pubout", "-out", str(rsa_pub)])
    h.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(ec_priv)])
    h.run(["openssl", "ec", "-in", str(ec_priv), "-pubout", "-out", str(ec_pub)])
    h.skopeo_copy(reg, src, "t/enc:1", ["--encryption-key", f"jwe:{rsa_pub}"])
    h.skopeo_copy(reg, src, "t/enc-ec:1", ["--encryption-key", f"jwe:{ec_pub}"])
    h.skopeo_copy(reg, src, "t/enc-last:1", ["--encryption-key", f"jwe:{rsa_pub}", "--encrypt-layer", "-1"])

    def tamper(man: dict[str, Any], blobs: dict[str, bytes]) -> None:
        d = man["layers"][0]["digest"]
        b = bytearray(blobs[d])
        b[len(b) // 2] ^= 0x01
        new = bytes(b)
        nd = "sha256:" + hashlib.sha256(new).hexdigest()
        blobs[nd] = new
        man["layers"][0]["digest"] = nd

    def swap(man: dict[str, Any], blobs: dict[str, bytes]) -> None:
        a0, a1 = man["layers"][0]["annotations"], man["layers"][1]["annotations"]
        man["layers"][0]["annotations"], man["layers"][1]["annotations"] = a1, a0

    rsa_key = load_private_key(rsa_priv.read_bytes())

    def to_provider(man: dict[str, Any], blobs: dict[str, bytes]) -> None:
        for layer in man["layers"]:
            ann = layer["annotations"]
            jwe = base64.b64decode(ann.pop("org.opencontainers.image.enc.keys.jwe"))
            opts = jwe_decrypt(jwe, [rsa_key])
            iv = os.urandom(12)
            packet = {
                "kid": KEK_URI,
                "wrapped_data": base64.b64encode(AESGCM(KEK).encrypt(iv, opts, None)).decode(),
                "iv": base64.b64encode(iv).decode(),
                "wrap_type": "A256GCM",
            }
            ann["org.opencontainers.image.enc.keys.provider.attestation-agent"] = base64.b64encode(
                json.dumps(packet).encode()
            ).decode()

    _reencrypt_variant(reg, "t/enc", "t/enc-tampered", tamper)
    _reencrypt_variant(reg, "t/enc", "t/enc-swapped", swap)
    _reencrypt_variant(reg, "t/enc", "t/enc-provider", to_provider)

    # cosign (key-based): the image in several repositories, each with its own .sig tag
    cosign_key = h.ec_key()
    cosign_pub = tmp / "cosign.pub"
    cosign_pub.write_bytes(h.pub_pem(cosign_key))
    for repo in (
        "t/cosign",
        "t/cosign-wrongkey",
        "t/cosign-otherdigest",
        "t/kl-good",
        "t/kl-expired",
        "t/kl-badrekor",
        "t/kl-wrongemail",
        "t/cosign-unsigned",
    ):
        h.skopeo_copy(reg, src, f"{repo}:1", [])
    digest = d_img
    name = f"{reg.host}/t/cosign"
    p = h.cosign_payload(name, digest)
    h.push_cosign(reg, "t/cosign", digest, [(p, h.cosign_layer(p, cosign_key)[0])])
    p = h.cosign_payload(f"{reg.host}/t/cosign-wrongkey", digest)
    h.push_cosign(reg, "t/cosign-wrongkey", digest, [(p, h.cosign_layer(p, h.ec_key())[0])])
    p = h.cosign_payload(f"{reg.host}/t/cosign-otherdigest", d_img2)
    h.push_cosign(reg, "t/cosign-otherdigest", digest, [(p, h.cosign_layer(p, cosign_key)[0])])

    # keyless: throwaway Fulcio CA + Rekor key
    fulcio = h.FakeFulcio.create()
    rekor = h.ec_key()
    rekor_pub = tmp / "rekor.pub"
    rekor_pub.write_bytes(h.pub_pem(rekor))
    t0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
    for repo, email, when, bad_hash in (
        ("t/kl-good", "dev@example.com", t0 + dt.timedelta(minutes=5), False),
        ("t/kl-expired", "dev@example.com", t0 + dt.timedelta(minutes=30), False),
        ("t/kl-badrekor", "dev@example.com", t0 + dt.timedelta(minutes=5), True),
        ("t/kl-wrongemail", "mallory@example.com", t0 + dt.timedelta(minutes=5), False),
    ):
        signer_key = h.ec_key()
        cert = fulcio.issue(signer_key, email, "https://accounts.example.com", t0, minutes=10)
        p = h.cosign_payload(f"{reg.host}/{repo}:1", digest)
        ann, sig = h.cosign_layer(p, signer_key, cert=cert, chain=fulcio.pem)
        ann["dev.sigstore.cosign/bundle"] = h.rekor_bundle(
            rekor, sig, p, cert, int(when.timestamp()), tamper_hash=bad_hash
        ).decode()
        h.push_cosign(reg, repo, digest, [(p, ann)])

    e = Env(reg, tmp, signer, other, read_d, rsa_priv, ec_priv, cosign_key, cosign_pub, fulcio, rekor_pub)
    e.digests = {"img": d_img, "img2": d_img2}
    yield e


def policy(env: Env, reqs: list[dict[str, Any]], scope: str | None = None) -> bytes:
    return json.dumps(
        {"default": [{"type": "reject"}], "transports": {"docker": {scope or env.reg.host: reqs}}}
    ).encode()


def signed_by(key: Path, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key), **extra}]


class FakeKbs:
    """The KBS resource side of CDH's key provider (no KBS runs here): returns the KEK."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def get_resource(self, uri: str) -> bytes:
        self.asked.append(uri)
        if uri != KEK_URI:
            raise LookupError(uri)
        return KEK


def _parsed(cfg: dict[str, Any]) -> dict[str, Any]:
    """The policy bytes (+ where its signatures and keys come from) and the decryption
    keys/key provider become what PullerConfig takes: a TrustPolicy and a LayerDecrypter."""
    policy = cfg.pop("signature_policy", None)
    sources = {k: cfg.pop(k) for k in ("registries_d", "sigstore_config", "resource_getter") if k in cfg}
    if policy is not None:
        cfg["signature_policy"] = TrustPolicy(policy, **sources)
    keys, provider = cfg.pop("decryption_keys", ()), cfg.pop("key_provider", None)
    if keys or provider is not None:
        cfg["decrypter"] = LayerDecrypter(keys, provider)
    return cfg


async def pull(env: Env, repo_tag: str, bundle: str, *, work: str = "work", **cfg: Any) -> PullResult:
    cfg = _parsed(cfg)
    config = PullerConfig(
        work_dir=env.tmp / "runs" / work,
        auth_json=env.reg.authfile.read_bytes(),
        insecure_registries=frozenset({env.reg.host}),
        snapshotter="copy",
        **cfg,
    )
    async with ImagePuller(config) as p:
        return await p.pull(f"{env.reg.host}/{repo_tag}", env.tmp / "runs" / bundle)


def assert_nothing_visible(env: Env, bundle: str, work: str | None = None) -> None:
    r = env.tmp / "runs" / bundle / "rootfs"
    assert not r.exists() or not any(r.iterdir())
    assert not (env.tmp / "runs" / bundle / "config.json").exists()
    if work is not None:
        layers_dir = env.tmp / "runs" / work / "layers"
        assert not layers_dir.exists() or not any(layers_dir.iterdir())


def check_rootfs(res: PullResult) -> None:
    assert (res.rootfs / "bin/app").read_bytes() == PAYLOAD
    assert (res.rootfs / "etc/motd").read_text() == "trusted\n"


# ---------------------------------------------------------------------- simple signing
async def test_skopeo_gpg_signed_image_accepted(env: Env, tmp_path: Path) -> None:
    pol = policy(env, signed_by(env.signer.pub))
    res = await pull(
        env, "t/signed:1", "gpg-ok", work="gpg-ok", signature_policy=pol, registries_d=env.read_d
    )
    check_rootfs(res)
    # armored keyData inline works too, and exactReference/matchExact identities
    data = base64.b64encode(env.signer.pub_asc.read_bytes()).decode()
    for ident in (
        {"type": "matchExact"},
        {"type": "exactReference", "dockerReference": f"{env.reg.host}/t/signed:1"},
        {"type": "remapIdentity", "prefix": f"{env.reg.host}/t", "signedPrefix": f"{env.reg.host}/t"},
    ):
        pol = policy(
            env, [{"type": "signedBy", "keyType": "GPGKeys", "keyData": data, "signedIdentity": ident}]
        )
        b = f"gpg-{ident['type']}"
        check_rootfs(await pull(env, "t/signed:1", b, work=b, signature_policy=pol, registries_d=env.read_d))


@pytest.mark.parametrize(
    ("repo", "key", "match"),
    [
        ("t/unsigned:1", "signer", "no signature exists"),
        ("t/signed:1", "other", "not by a trusted key"),
        ("t/wrongid:1", "signer", "another identity"),
        ("t/otherdigest:1", "signer", "another manifest digest"),
    ],
)
async def test_bad_gpg_cases_rejected_before_anything_is_visible(
    env: Env, repo: str, key: str, match: str
) -> None:
    k = env.signer if key == "signer" else env.other
    b = f"bad-{repo.split('/')[1].split(':')[0]}-{key}"
    with pytest.raises(SignatureRejected, match=match):
        await pull(
            env, repo, b, work=b, signature_policy=policy(env, signed_by(k.pub)), registries_d=env.read_d
        )
    assert_nothing_visible(env, b, b)


async def test_policy_semantics_on_real_pulls(env: Env) -> None:
    # empty requirement list: refused at load (image-rs would accept)
    with pytest.raises(InvalidPolicy, match="empty requirement list"):
        await pull(env, "t/signed:1", "empty", work="empty", signature_policy=policy(env, []))
    assert_nothing_visible(env, "empty", "empty")
    # most specific scope wins even when it is laxer; a broader reject does not apply
    pol = json.dumps(
        {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    env.reg.host: [{"type": "reject"}],
                    f"{env.reg.host}/t/unsigned": [{"type": "insecureAcceptAnything"}],
                }
            },
        }
    ).encode()
    check_rootfs(await pull(env, "t/unsigned:1", "scoped", work="scoped", signature_policy=pol))
    with pytest.raises(SignatureRejected, match="rejects"):
        await pull(env, "t/signed:1", "scoped2", work="scoped", signature_policy=pol)
    # all requirements must hold
    both = signed_by(env.signer.pub) + signed_by(env.other.pub)
    with pytest.raises(SignatureRejected, match="requirement 2"):
        await pull(
            env,
            "t/signed:1",
            "both",
            work="both",
            signature_policy=policy(env, both),
            registries_d=env.read_d,
        )


async def test_cached_image_is_checked_against_the_current_policy(env: Env) -> None:
    ok = policy(env, signed_by(env.signer.pub))
    res = await pull(env, "t/signed:1", "c1", work="cache", signature_policy=ok, registries_d=env.read_d)
    check_rootfs(res)
    assert res.layers_cached == 0
    res = await pull(env, "t/signed:1", "c2", work="cache", signature_policy=ok, registries_d=env.read_d)
    assert res.layers_cached == 2
    with pytest.raises(SignatureRejected):
        await pull(
            env,
            "t/signed:1",
            "c3",
            work="cache",
            signature_policy=policy(env, signed_by(env.other.pub)),
            registries_d=env.read_d,
        )
    assert_nothing_visible(env, "c3")


async def test_lookaside_over_http(env: Env, tmp_path: Path) -> None:
    """The same skopeo signatures served by a real HTTP server (python -m http.server)."""
    from tests.support.registry import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(env.tmp / "sigstore"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        d = tmp_path / "rd"
        d.mkdir()
        (d / "a.yaml").write_text(f"docker:\n  {env.reg.host}/t:\n    lookaside: http://127.0.0.1:{port}\n")
        pol = policy(env, signed_by(env.signer.pub))
        check_rootfs(
            await pull(env, "t/signed:1", "http-ok", work="http", signature_policy=pol, registries_d=d)
        )
        with pytest.raises(SignatureRejected, match="no signature"):
            await pull(env, "t/unsigned:1", "http-bad", work="http2", signature_policy=pol, registries_d=d)
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------- cosign
def sigstore_req(env: Env, **kw: Any) -> list[dict[str, Any]]:
    return [
        {
            "type": "sigstoreSigned",
            "keyPath": str(env.cosign_pub),
            "signedIdentity": {"type": "matchRepository"},
            **kw,
        }
    ]


async def test_cosign_key_signed_image(env: Env) -> None:
    check_rootfs(
        await pull(
            env,
            "t/cosign:1",
            "cos-ok",
            work="cos-ok",
            signature_policy=policy(env, sigstore_req(env)),
            registries_d=env.read_d,
        )
    )
    # cosign payloads name the repository only: the default identity rule cannot accept them
    strict = [{"type": "sigstoreSigned", "keyPath": str(env.cosign_pub)}]
    with pytest.raises(SignatureRejected, match="another identity"):
        await pull(
            env,
            "t/cosign:1",
            "cos-id",
            work="cos-id",
            signature_policy=policy(env, strict),
            registries_d=env.read_d,
        )
    # keyData (base64 PEM, containers/image) and raw PEM (image-rs) both load
    for data in (base64.b64encode(env.cosign_pub.read_bytes()).decode(), env.cosign_pub.read_text()):
        req = [{"type": "sigstoreSigned", "keyData": data, "signedIdentity": {"type": "matchRepository"}}]
        check_rootfs(
            await pull(
                env, "t/cosign:1", f"cos-{len(data)}", work="cos-kd", signature_policy=policy(env, req)
            )
        )


async def assert_refused(env: Env, repo: str, match: str, **config: Any) -> None:
    """The pull of ``repo`` is refused for ``match`` and nothing of it is visible."""
    b = "bad-" + repo.split("/")[1].split(":")[0]
    with pytest.raises(SignatureRejected, match=match):
        await pull(env, repo, b, work=b, **config)
    assert_nothing_visible(env, b, b)


@pytest.mark.parametrize(
    ("repo", "match"),
    [
        ("t/cosign-wrongkey:1", "does not verify"),
        ("t/cosign-otherdigest:1", "another manifest digest"),
        ("t/cosign-unsigned:1", "no sigstore signature"),
    ],
)
async def test_bad_cosign_cases(env: Env, repo: str, match: str) -> None:
    await assert_refused(
        env, repo, match, signature_policy=policy(env, sigstore_req(env)), registries_d=env.read_d
    )


def fulcio_req(env: Env, email: str = "dev@example.com") -> list[dict[str, Any]]:
    return [
        {
            "type": "sigstoreSigned",
            "fulcio": {
                "caData": base64.b64encode(env.fulcio.pem).decode(),
                "oidcIssuer": "https://accounts.example.com",
                "subjectEmail": email,
            },
            "rekorPublicKeyPath": str(env.rekor_pub),
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }
    ]


async def test_keyless_fulcio_rekor(env: Env) -> None:
    check_rootfs(
        await pull(env, "t/kl-good:1", "kl-ok", work="kl-ok", signature_policy=policy(env, fulcio_req(env)))
    )


@pytest.mark.parametrize(
    ("repo", "match"),
    [
        ("t/kl-expired:1", "not valid at signing time"),
        ("t/kl-badrekor:1", "another payload hash"),
        ("t/kl-wrongemail:1", "another subject email"),
    ],
)
async def test_bad_keyless_cases(env: Env, repo: str, match: str) -> None:
    await assert_refused(env, repo, match, signature_policy=policy(env, fulcio_req(env)))


# ---------------------------------------------------------------------- encryption
async def test_skopeo_encrypted_images_decrypt_with_rsa_and_ec_keys(env: Env) -> None:
    keys = (env.rsa_priv.read_bytes(),)
    check_rootfs(await pull(env, "t/enc:1", "enc-rsa", work="enc-rsa", decryption_keys=keys))
    ec_keys = (env.rsa_priv.read_bytes(), env.ec_priv.read_bytes())
    check_rootfs(await pull(env, "t/enc-ec:1", "enc-ec", work="enc-ec", decryption_keys=ec_keys))


async def test_missing_key_refused_even_when_layers_are_cached(env: Env) -> None:
    with pytest.raises(KeyUnavailable, match="decryption-key"):
        await pull(env, "t/enc:1", "nokey", work="nokey")
    assert_nothing_visible(env, "nokey", "nokey")
    with pytest.raises(KeyUnavailable, match="no configured key"):
        await pull(env, "t/enc:1", "wrongkey", work="wrongkey", decryption_keys=(env.ec_priv.read_bytes(),))
    assert_nothing_visible(env, "wrongkey", "wrongkey")
    # decrypted once, the layers sit in the store: a pull without the key is still refused
    check_rootfs(
        await pull(env, "t/enc:1", "cached1", work="enc-cache", decryption_keys=(env.rsa_priv.read_bytes(),))
    )
    with pytest.raises(KeyUnavailable):
        await pull(env, "t/enc:1", "cached2", work="enc-cache")
    assert_nothing_visible(env, "cached2")


async def test_cached_plaintext_of_an_encrypted_image_needs_its_key(env: Env) -> None:
    """imgcrypt CVE-2022-24778: an encrypted image's diff_ids are public (its config); an
    image naming them over junk layer blobs must not get the decrypted layers from the store."""
    keys = (env.rsa_priv.read_bytes(),)
    check_rootfs(await pull(env, "t/enc:1", "share-enc", work="share", decryption_keys=keys))

    def junk_layers(man: dict[str, Any], blobs: dict[str, bytes]) -> None:
        for n, d in enumerate(man["layers"]):
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
            d.pop("annotations", None)
            blobs[f"junk{n}"] = bytes(1024)  # an empty tar: no payload of the image
            d["digest"] = f"junk{n}"

    _reencrypt_variant(env.reg, "t/enc", "t/diffid-thief", junk_layers)
    with pytest.raises(DigestMismatch, match="uncompressed content"):
        await pull(env, "t/diffid-thief:1", "share-thief", work="share")
    assert_nothing_visible(env, "share-thief")
    # the same content unencrypted proves itself by its diff_ids and shares the store
    check_rootfs(await pull(env, "t/unsigned:1", "share-plain", work="share"))
    # and the key holder still reuses the cached layers
    res = await pull(env, "t/enc:1", "share-enc2", work="share", decryption_keys=keys)
    check_rootfs(res)
    assert res.layers_cached == res.layers and res.bytes_downloaded == 0


@pytest.mark.parametrize(
    ("repo", "bad_layers"),
    [
        ("t/enc-tampered:1", [0]),  # one flipped ciphertext bit in layer 0
        ("t/enc-swapped:1", [0, 1]),  # each layer carries the other layer's wrapped key
    ],
)
async def test_tampered_and_swapped_layers_commit_nothing(env: Env, repo: str, bad_layers: list[int]) -> None:
    b = "bad-" + repo.split("/")[1].split(":")[0]
    with pytest.raises(IntegrityError, match="HMAC"):
        await pull(env, repo, b, work=b, decryption_keys=(env.rsa_priv.read_bytes(),))
    assert_nothing_visible(env, b)
    # the bad layers never reach the store (a good sibling may, it verified on its own)
    name = repo.split(":")[0]
    man = json.loads(h.get_manifest(env.reg, name, "1"))
    cfg = json.loads(h.get_blob(env.reg, name, man["config"]["digest"]))
    chain = chain_ids(cfg["rootfs"]["diff_ids"])
    store = LayerStore(env.tmp / "runs" / b)
    assert not any(store.has_layer(chain[i]) for i in bad_layers)


async def test_key_provider_annotation_through_cdh_unwrapper(env: Env) -> None:
    kbs = FakeKbs()
    unwrapper = KbsKeyProvider(kbs)  # type: ignore[arg-type]
    res = await pull(env, "t/enc-provider:1", "prov", work="prov", key_provider=unwrapper)
    check_rootfs(res)
    assert kbs.asked and set(kbs.asked) == {KEK_URI}
    with pytest.raises(KeyUnavailable, match="configure a key provider"):
        await pull(env, "t/enc-provider:1", "prov-none", work="prov-none")
    assert_nothing_visible(env, "prov-none", "prov-none")


async def test_decryption_error_is_a_decryption_error(env: Env) -> None:
    assert issubclass(KeyUnavailable, DecryptionError) and issubclass(SignatureRejected, PolicyRejected)


# ---------------------------------------------------------------------- CLI
def test_cli_policy_registries_d_and_decryption_key(env: Env, tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_bytes(policy(env, signed_by(env.signer.pub)))
    exe = shutil.which("coco-image") or str(Path(sys.executable).parent / "coco-image")
    base = [
        exe,
        "pull",
        "--plain-http",
        env.reg.host,
        "--auth-file",
        str(env.reg.authfile),
        "--snapshotter",
        "copy",
    ]
    cp = subprocess.run(
        [
            *base,
            f"{env.reg.host}/t/signed:1",
            "--bundle",
            str(tmp_path / "b1"),
            "--work-dir",
            str(tmp_path / "w1"),
            "--policy",
            str(pol),
            "--registries-d",
            str(env.read_d),
        ],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr.decode()[-500:]
    assert cp.stdout.decode().strip() == env.digests["img"]
    cp = subprocess.run(
        [
            *base,
            f"{env.reg.host}/t/unsigned:1",
            "--bundle",
            str(tmp_path / "b2"),
            "--work-dir",
            str(tmp_path / "w2"),
            "--policy",
            str(pol),
            "--registries-d",
            str(env.read_d),
        ],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 1 and b"no signature exists" in cp.stderr
    cp = subprocess.run(
        [
            *base,
            f"{env.reg.host}/t/enc:1",
            "--bundle",
            str(tmp_path / "b3"),
            "--work-dir",
            str(tmp_path / "w3"),
            "--decryption-key",
            str(env.rsa_priv),
        ],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr.decode()[-500:]
    assert (tmp_path / "b3/rootfs/bin/app").read_bytes() == PAYLOAD


async def test_keys_from_kbs_uris_through_the_resource_getter(env: Env) -> None:
    """keyPath kbs:///... is fetched through TrustPolicy's resource_getter (CDH's GetResource)."""
    asked: list[str] = []
    store = {
        "kbs:///default/keys/signer": env.signer.pub.read_bytes(),
        "kbs:///default/keys/cosign": env.cosign_pub.read_bytes(),
    }

    async def getter(uri: str) -> bytes:
        asked.append(uri)
        return store[uri]

    pol = policy(env, [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/keys/signer"}])
    check_rootfs(
        await pull(
            env,
            "t/signed:1",
            "kbs-gpg",
            work="kbs",
            signature_policy=pol,
            registries_d=env.read_d,
            resource_getter=getter,
        )
    )
    pol = policy(
        env,
        [
            {
                "type": "sigstoreSigned",
                "keyPath": "kbs:///default/keys/cosign",
                "signedIdentity": {"type": "matchRepository"},
            }
        ],
    )
    check_rootfs(
        await pull(env, "t/cosign:1", "kbs-cos", work="kbs", signature_policy=pol, resource_getter=getter)
    )
    assert asked == ["kbs:///default/keys/signer", "kbs:///default/keys/cosign"]
    # a KBS that cannot deliver the key: refused (fail closed)
    pol = policy(env, [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/keys/missing"}])
    with pytest.raises(InvalidPolicy, match="cannot fetch key"):
        await pull(
            env,
            "t/signed:1",
            "kbs-missing",
            work="kbs-missing",
            signature_policy=pol,
            registries_d=env.read_d,
            resource_getter=getter,
        )
    assert_nothing_visible(env, "kbs-missing", "kbs-missing")
    # no resource getter at all
    with pytest.raises(InvalidPolicy, match="no resource getter"):
        await pull(
            env, "t/signed:1", "kbs-none", work="kbs-none", signature_policy=pol, registries_d=env.read_d
        )


async def test_signed_image_index(env: Env, tmp_path: Path) -> None:
    """skopeo copy --all --sign-by signs the index; the pull selects the platform manifest and the
    signature on the index digest vouches for it (containers/image and image-rs accept both)."""
    from tests.support.registry import OciLayout

    lay = OciLayout(tmp_path / "multi")
    amd = lay.image([(layers()[0], "gzip"), (layers()[1], "gzip")], arch="amd64", tag=None)
    arm = lay.image([(layer_tar([("arch", "file", b"arm64\n", 0o644)]), "gzip")], arch="arm64", tag=None)
    lay.image_index([amd, arm], "multi")
    write_d = tmp_path / "rd-write"
    write_d.mkdir()
    (write_d / "d.yaml").write_text(
        f"default-docker:\n  lookaside-staging: file://{env.tmp / 'sigstore'}\n  lookaside: file://{env.tmp / 'sigstore'}\n"
    )
    h.skopeo_copy(
        env.reg,
        f"oci:{lay.path}:multi",
        "t/multi:1",
        ["--all", "--registries.d", str(write_d), "--sign-by", env.signer.fpr],
        env.signer.env,
    )
    # keep only the index's signature: the platform manifest is vouched for through the index
    _, _, body = h._req(
        env.reg,
        "GET",
        "/v2/t/multi/manifests/1",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    index_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    for d in (env.tmp / "sigstore/t").glob("multi@*"):
        if d.name != f"multi@sha256={index_digest.split(':')[1]}":
            shutil.rmtree(d)
    pol = policy(env, signed_by(env.signer.pub))
    res = await pull(
        env,
        "t/multi:1",
        "multi",
        work="multi",
        signature_policy=pol,
        registries_d=env.read_d,
        platform="linux/amd64",
    )
    assert res.index_digest == index_digest and res.index_digest != res.manifest_digest
    check_rootfs(res)
    with pytest.raises(SignatureRejected):
        await pull(
            env,
            "t/multi:1",
            "multi-other",
            work="multi",
            signature_policy=policy(env, signed_by(env.other.pub)),
            registries_d=env.read_d,
            platform="linux/amd64",
        )


async def test_cdh_image_section_policy_and_sigstore_config(env: Env) -> None:
    """CDH's [image] (inline image_security_policy + sigstore_config, auth via file://) drives the
    same checks through ImagePullService."""
    from cdh.config import CdhImageConfig
    from cdh.errors import ImagePullFailed
    from cdh.image import ImagePullService
    from image_pull.registries_conf import RegistryConfig, RegistryRule

    policy_json = policy(env, signed_by(env.signer.pub)).decode()
    sigstore_yaml = f"default-docker:\n  sigstore: file://{env.tmp / 'sigstore'}\n"
    cfg = CdhImageConfig(
        work_dir=env.tmp / "runs" / "cdh-work",
        image_security_policy=policy_json,
        sigstore_config=sigstore_yaml,
        authenticated_registry_credentials_uri=f"file://{env.reg.authfile}",
        registry_config=RegistryConfig(
            registries=(RegistryRule(prefix=env.reg.host, location=env.reg.host, insecure=True),)
        ),
    )
    handler = ImagePullService(cfg, resources=None, aa=None)
    bundle = env.tmp / "runs" / "cdh-signed"
    digest = await handler.pull(f"{env.reg.host}/t/signed:1", str(bundle))
    assert digest == env.digests["img"]
    try:
        assert (bundle / "rootfs/bin/app").read_bytes() == PAYLOAD
    finally:
        await (await handler._get_puller()).release_bundle(bundle)  # overlay mount (snapshotter auto)
    with pytest.raises(ImagePullFailed, match="no signature exists"):
        await handler.pull(f"{env.reg.host}/t/unsigned:1", str(env.tmp / "runs" / "cdh-unsigned"))
    assert_nothing_visible(env, "cdh-unsigned")


@pytest.mark.parametrize(
    ("case", "repo", "accepted"),
    [
        ("signer", "t/signed:1", True),
        ("signer", "t/unsigned:1", False),
        ("other", "t/signed:1", False),
        ("signer", "t/wrongid:1", False),
        ("signer", "t/otherdigest:1", False),
        ("exactrepo", "t/wrongid:1", True),
        ("scoped-accept", "t/unsigned:1", True),
        ("empty", "t/signed:1", False),
        # keyring-certified keys: unimplemented in containers/image, so never "signed by the keyring"
        ("signed-by-gpg-keys", "t/signed:1", False),
        ("x509-certificates", "t/signed:1", False),
    ],
)
async def test_verdicts_agree_with_skopeo(
    env: Env, tmp_path: Path, case: str, repo: str, accepted: bool
) -> None:
    """The same policy.json and registries.d handed to skopeo (containers/image) reach the same verdict."""
    reqs: dict[str, list[dict[str, Any]]] = {
        "signer": signed_by(env.signer.pub),
        "other": signed_by(env.other.pub),
        "exactrepo": signed_by(
            env.signer.pub,
            signedIdentity={"type": "exactRepository", "dockerRepository": f"{env.reg.host}/t/elsewhere"},
        ),
        "scoped-accept": [{"type": "insecureAcceptAnything"}],
        "empty": [],
        "signed-by-gpg-keys": [
            {"type": "signedBy", "keyType": "signedByGPGKeys", "keyPath": str(env.signer.pub)}
        ],
        "x509-certificates": [
            {"type": "signedBy", "keyType": "X509Certificates", "keyPath": str(env.signer.pub)}
        ],
    }
    pol = tmp_path / "policy.json"
    pol.write_bytes(policy(env, reqs[case]))
    cp = subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            f"{h.USER}:{h.PASSWORD}",
            "--policy",
            str(pol),
            "--registries.d",
            str(env.read_d),
            f"docker://{env.reg.host}/{repo}",
            f"dir:{tmp_path / 'copy'}",
        ],
        capture_output=True,
        timeout=120,
    )
    skopeo_ok = cp.returncode == 0
    try:
        await pull(
            env,
            repo,
            f"parity-{case}-{repo.split('/')[1][:-2]}",
            work="parity",
            signature_policy=pol.read_bytes(),
            registries_d=env.read_d,
        )
        ours_ok = True
    except PolicyRejected:
        ours_ok = False
    assert ours_ok == skopeo_ok == accepted, cp.stderr.decode()[-300:]


async def test_sigstore_attachments_follow_registries_d(env: Env, tmp_path: Path) -> None:
    """With a registries.d that does not enable use-sigstore-attachments, .sig tags are not read
    (containers/image); with no registries.d/sigstore config at all they are (image-rs)."""
    d = tmp_path / "rd"
    d.mkdir()
    (d / "x.yaml").write_text(f"default-docker:\n  lookaside: file://{env.tmp / 'sigstore'}\n")
    pol = policy(env, sigstore_req(env))
    with pytest.raises(SignatureRejected, match="no sigstore signature"):
        await pull(env, "t/cosign:1", "att-off", work="att", signature_policy=pol, registries_d=d)
    check_rootfs(await pull(env, "t/cosign:1", "att-default", work="att", signature_policy=pol))
    (d / "y.yaml").write_text(f"docker:\n  {env.reg.host}/t/cosign:\n    use-sigstore-attachments: true\n")
    check_rootfs(await pull(env, "t/cosign:1", "att-on", work="att", signature_policy=pol, registries_d=d))


async def test_partly_encrypted_image(env: Env) -> None:
    """skopeo --encrypt-layer -1: only the last layer is encrypted; it still needs the key."""
    man = json.loads(h.get_manifest(env.reg, "t/enc-last", "1"))
    assert [m["mediaType"].endswith("+encrypted") for m in man["layers"]] == [False, True]
    check_rootfs(
        await pull(env, "t/enc-last:1", "last", work="last", decryption_keys=(env.rsa_priv.read_bytes(),))
    )
    with pytest.raises(KeyUnavailable):
        await pull(env, "t/enc-last:1", "last-nokey", work="last-nokey")
    assert_nothing_visible(env, "last-nokey", "last-nokey")


async def test_keys_never_reach_a_child_process(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encrypted layers are decrypted in-process: argv and environment of child processes are
    readable through /proc, so no layer worker may be given a key (only plain layers use one)."""
    import asyncio

    spawned: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = asyncio.create_subprocess_exec

    async def spy(*args: Any, **kw: Any) -> Any:
        spawned.append((args, kw))
        return await real(*args, **kw)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    key = env.rsa_priv.read_bytes()
    res = await pull(env, "t/enc-last:1", "nochild", work="nochild", decryption_keys=(key,))
    check_rootfs(res)
    workers = [a for a, _ in spawned if "image_pull.layer_worker" in a]
    assert len(workers) == 1  # the plain layer; the encrypted one stays in this process
    body = b"".join(key.splitlines()[1:-1]).decode()
    for args, kw in spawned:
        text = repr(args) + repr(kw.get("env"))
        assert body[:40] not in text and "symkey" not in text and "BEGIN" not in text
        assert kw.get("env") is None or not any("KEY" in k for k in kw["env"])
