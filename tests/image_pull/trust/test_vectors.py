"""containers/image's real signature vectors (gpg, cosign key, cosign+Rekor, Fulcio+Rekor)
through the full policy evaluation (:class:`TrustPolicy`).

The GPG vector is read from a real file:// lookaside. The cosign vectors' images
are not available (their manifests reference blobs nobody has), so the registry
side of the ``.sig`` lookup is a small stand-in serving the vector's payload and
annotations; everything after it (signature, Rekor SET, Fulcio chain, payload,
identity) is the production path.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from image_pull.errors import NotFound
from image_pull.hooks import PolicyContext
from image_pull.manifest import Manifest, parse_manifest_document
from image_pull.reference import Reference, parse_reference
from image_pull.registry import FetchedManifest, RegistryClient
from image_pull.trust import SignatureRejected, TrustPolicy
from image_pull.trust.signatures.cosign import ANN_BUNDLE, CosignSignature
from tests.image_pull.trust.helpers import FakeFulcio

V = Path(__file__).parent / "vectors"


class SigTagRegistry:
    """Serves ``<digest>.sig`` manifests built from sigstore-json vectors (stand-in for the registry)."""

    def __init__(self, sigs: dict[str, list[bytes]]) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        for digest, blobs in sigs.items():
            layers = []
            for blob in blobs:
                doc = json.loads(blob[len(b"\x00sigstore-json\n") :])
                payload = base64.b64decode(doc["payload"])
                d = "sha256:" + hashlib.sha256(payload).hexdigest()
                self.blobs[d] = payload
                layers.append(
                    {
                        "mediaType": doc["mimeType"],
                        "digest": d,
                        "size": len(payload),
                        "annotations": doc["annotations"],
                    }
                )
            cfg = b"{}"
            self.blobs["sha256:" + hashlib.sha256(cfg).hexdigest()] = cfg
            man = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(),
                    "size": 2,
                },
                "layers": layers,
            }
            self.manifests[digest.replace(":", "-") + ".sig"] = json.dumps(man).encode()

    async def get_manifest(self, ref: Reference, reference: str | None = None, **_: Any) -> FetchedManifest:
        body = self.manifests.get(reference or "")
        if body is None:
            raise NotFound("no such tag")
        return FetchedManifest(
            body, "application/vnd.oci.image.manifest.v1+json", "sha256:" + hashlib.sha256(body).hexdigest()
        )

    async def get_blob(self, ref: Reference, digest: str, size: int, **_: Any) -> bytes:
        return self.blobs[digest]


def ctx_for(image: str, manifest_path: Path, registry: Any) -> PolicyContext:
    body = manifest_path.read_bytes()
    man = parse_manifest_document(body, None)
    assert isinstance(man, Manifest)
    return PolicyContext(
        reference=parse_reference(image),
        original_reference=image,
        manifest_digest="sha256:" + hashlib.sha256(body).hexdigest(),
        index_digest=None,
        manifest=man,
        manifest_bytes=body,
        registry=registry,
    )


def pol(reqs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"default": reqs}).encode()


# ---------------------------------------------------------------------- GPG
def plain_registry() -> RegistryClient:
    """A registry that answers /v2/ without the signature extension (httpx mock transport)."""
    return RegistryClient(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))))


async def test_gpg_vector_from_file_lookaside(tmp_path: Path) -> None:
    image = "docker.io/testing/manifest:latest"
    ctx = ctx_for(image, V / "dir-img-valid/manifest.json", registry=plain_registry())
    d = tmp_path / "sigs" / f"testing/manifest@sha256={ctx.manifest_digest.split(':')[1]}"
    d.mkdir(parents=True)
    (d / "signature-1").write_bytes((V / "dir-img-valid/signature-1").read_bytes())
    (tmp_path / "rd").mkdir()
    (tmp_path / "rd/x.yaml").write_text(f"default-docker:\n  lookaside: file://{tmp_path / 'sigs'}\n")
    ok = pol([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(V / "public-key.gpg")}])
    acc = await TrustPolicy(ok, registries_d=tmp_path / "rd").check(ctx)
    assert acc.signers == ("gpg:08CD26E446E2E95249B7A405E932F44B23E8DD43",)
    # another tag: the signature names testing/manifest:latest, so matchRepoDigestOrExact refuses
    other = ctx_for(
        "docker.io/testing/manifest:v2", V / "dir-img-valid/manifest.json", registry=plain_registry()
    )
    with pytest.raises(SignatureRejected, match="another identity"):
        await TrustPolicy(ok, registries_d=tmp_path / "rd").check(other)
    relaxed = pol(
        [
            {
                "type": "signedBy",
                "keyType": "GPGKeys",
                "keyPath": str(V / "public-key.gpg"),
                "signedIdentity": {"type": "matchRepository"},
            }
        ]
    )
    await TrustPolicy(relaxed, registries_d=tmp_path / "rd").check(other)
    # an expired signature (containers/image's expired.signature)
    (d / "signature-1").write_bytes((V / "expired.signature").read_bytes())
    with pytest.raises(SignatureRejected, match="signature has expired"):
        await TrustPolicy(ok, registries_d=tmp_path / "rd").check(ctx)


# ---------------------------------------------------------------------- cosign
def cosign_ctx(image: str, vec: str) -> PolicyContext:
    body = (V / vec / "manifest.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    reg = SigTagRegistry({digest: [(V / vec / "signature-1").read_bytes()]})
    return ctx_for(image, V / vec / "manifest.json", reg)


async def test_cosign_key_vector() -> None:
    ctx = cosign_ctx("192.168.64.2:5000/cosign-signed-single-sample:latest", "dir-img-cosign-valid")
    req = {
        "type": "sigstoreSigned",
        "keyPath": str(V / "cosign.pub"),
        "signedIdentity": {"type": "matchRepository"},
    }
    acc = await TrustPolicy(pol([req])).check(ctx)
    assert acc.signers == ("cosign-key",)
    with pytest.raises(SignatureRejected, match="does not verify"):
        await TrustPolicy(pol([{**req, "keyPath": str(V / "cosign2.pub")}])).check(ctx)
    # cosign names only the repository: the default identity rule refuses it
    with pytest.raises(SignatureRejected, match="another identity"):
        await TrustPolicy(pol([{"type": "sigstoreSigned", "keyPath": str(V / "cosign.pub")}])).check(ctx)
    # a Rekor key is configured, but the signature has no bundle
    with pytest.raises(SignatureRejected, match="no Rekor bundle"):
        await TrustPolicy(pol([{**req, "rekorPublicKeyPath": str(V / "rekor.pub")}])).check(ctx)
    # another repository
    other = cosign_ctx("192.168.64.2:5000/other:latest", "dir-img-cosign-valid")
    with pytest.raises(SignatureRejected, match="another identity"):
        await TrustPolicy(pol([req])).check(other)


async def test_cosign_key_rekor_vector() -> None:
    ctx = cosign_ctx("192.168.64.2:5000/cosign-signed/key-1:latest", "dir-img-cosign-key-rekor-valid")
    req = {
        "type": "sigstoreSigned",
        "keyPaths": [str(V / "cosign.pub"), str(V / "cosign2.pub")],
        "rekorPublicKeyPath": str(V / "rekor.pub"),
        "signedIdentity": {"type": "matchRepository"},
    }
    await TrustPolicy(pol([req])).check(ctx)
    # SET signed by an untrusted "Rekor" key
    with pytest.raises(SignatureRejected, match="trusted Rekor key"):
        await TrustPolicy(pol([{**req, "rekorPublicKeyPath": str(V / "cosign.pub")}])).check(ctx)


def _tamper_bundle(blob: bytes, edit: Any) -> bytes:
    doc = json.loads(blob[len(b"\x00sigstore-json\n") :])
    bundle = json.loads(doc["annotations"][ANN_BUNDLE])
    edit(bundle)
    doc["annotations"][ANN_BUNDLE] = json.dumps(bundle)
    return b"\x00sigstore-json\n" + json.dumps(doc).encode()


async def test_fulcio_rekor_vector_and_its_bad_variants() -> None:
    image = "192.168.64.2:5000/cosign-signed/fulcio-rekor-1:latest"
    vec = "dir-img-cosign-fulcio-rekor-valid"
    ctx = cosign_ctx(image, vec)
    fulcio = {
        "caPath": str(V / "fulcio_v1.crt.pem"),
        "oidcIssuer": "https://github.com/login/oauth",
        "subjectEmail": "mitr@redhat.com",
    }
    req = {
        "type": "sigstoreSigned",
        "fulcio": fulcio,
        "rekorPublicKeyPath": str(V / "rekor.pub"),
        "signedIdentity": {"type": "matchRepository"},
    }
    acc = await TrustPolicy(pol([req])).check(ctx)
    assert acc.signers == ("fulcio:mitr@redhat.com",)
    for field, value, match in (
        ("subjectEmail", "someone@example.com", "another subject email"),
        ("oidcIssuer", "https://accounts.google.com", "another OIDC issuer"),
    ):
        bad = {**req, "fulcio": {**fulcio, field: value}}
        with pytest.raises(SignatureRejected, match=match):
            await TrustPolicy(pol([bad])).check(ctx)
    # a CA that did not issue the certificate
    other_ca = base64.b64encode(FakeFulcio.create().pem).decode()
    wrong_ca = {
        **req,
        "fulcio": {
            "caData": other_ca,
            "oidcIssuer": fulcio["oidcIssuer"],
            "subjectEmail": fulcio["subjectEmail"],
        },
    }
    with pytest.raises(SignatureRejected, match="does not chain to the trusted CA"):
        await TrustPolicy(pol([wrong_ca])).check(ctx)
    body = (V / vec / "manifest.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    blob = (V / vec / "signature-1").read_bytes()

    def with_sig(b: bytes) -> PolicyContext:
        return ctx_for(image, V / vec / "manifest.json", SigTagRegistry({digest: [b]}))

    # integratedTime moved a year later: outside the short-lived certificate (and the SET no longer verifies)
    later = _tamper_bundle(
        blob, lambda b: b["Payload"].__setitem__("integratedTime", b["Payload"]["integratedTime"] + 31536000)
    )
    with pytest.raises(SignatureRejected, match="Rekor"):
        await TrustPolicy(pol([req])).check(with_sig(later))

    # bad inclusion promise: SET bytes flipped
    def flip(b: dict[str, Any]) -> None:
        s = bytearray(base64.b64decode(b["SignedEntryTimestamp"]))
        s[-1] ^= 1
        b["SignedEntryTimestamp"] = base64.b64encode(bytes(s)).decode()

    with pytest.raises(SignatureRejected, match="trusted Rekor key"):
        await TrustPolicy(pol([req])).check(with_sig(_tamper_bundle(blob, flip)))
    # "now" long after the certificate expired is fine: validity is checked at integratedTime
    sig = CosignSignature.from_sigstore_json(blob)
    assert sig.certificate is not None and sig.bundle is not None


async def test_pki_vector() -> None:
    """sigstoreSigned with pki (own CA, no Rekor): chain to roots via configured intermediates."""
    ctx = cosign_ctx("localhost:5000/test:latest", "dir-img-cosign-pki-valid")
    pki = {
        "caRootsPath": str(V / "pki_root_crts.pem"),
        "caIntermediatesPath": str(V / "pki_intermediate_crts.pem"),
        "subjectEmail": "qiwan@redhat.com",
        "subjectHostname": "myhost.example.com",
    }
    req = {"type": "sigstoreSigned", "pki": pki, "signedIdentity": {"type": "matchRepository"}}
    assert (await TrustPolicy(pol([req])).check(ctx)).signers == ("pki",)
    for field, value, match in (
        ("subjectEmail", "x@example.com", "another subject email"),
        ("subjectHostname", "other.example.com", "another subject hostname"),
    ):
        with pytest.raises(SignatureRejected, match=match):
            await TrustPolicy(pol([{**req, "pki": {**pki, field: value}}])).check(ctx)
    # without configured intermediates it still verifies: the signature carries its chain
    roots_only = {k: v for k, v in pki.items() if k != "caIntermediatesPath"}
    await TrustPolicy(pol([{**req, "pki": roots_only}])).check(ctx)
    wrong_root = {**roots_only, "caRootsPath": str(V / "fulcio_v1.crt.pem")}
    with pytest.raises(SignatureRejected, match="does not chain"):
        await TrustPolicy(pol([{**req, "pki": wrong_root}])).check(ctx)
