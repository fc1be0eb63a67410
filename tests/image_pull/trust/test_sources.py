"""Signature sources and OpenPGP edge cases: registries.d parsing/lookup, lookaside
listing, the registry signature extension (httpx mock transport: docker-registry
does not implement it), and gpgv verdicts for expired keys, armored keyrings,
cleartext signatures and literal-only messages made by real gpg."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx
import pytest

from image_pull.reference import parse_reference
from image_pull.registry import RegistryClient
from image_pull.trust.errors import InvalidPolicy, SignatureRejected
from image_pull.trust.signatures.gpg import dearmor_keyring, verify_signed_message
from image_pull.trust.signatures.lookaside import fetch_lookaside, fetch_registry_extension
from image_pull.trust.signatures.registries_d import RegistriesD
from tests.image_pull.trust.helpers import gpg_key, run
from tests.support.registry import have_tools

REF = parse_reference("registry.example.com:5000/ns/app:1")
D = "sha256:" + "d" * 64


def test_registries_d_lookup_and_merge(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "default-docker:\n  lookaside: file:///default\n"
        "docker:\n"
        "  registry.example.com:5000:\n    sigstore: https://host-level\n    use-sigstore-attachments: true\n"
        "  registry.example.com:5000/ns/app:\n    use-sigstore-attachments: false\n"
    )
    (tmp_path / "b.yaml").write_text(
        "docker:\n  registry.example.com:5000/ns/app:1:\n    lookaside: https://exact\n"
    )
    (tmp_path / "ignored.txt").write_text("not yaml: [")
    rd = RegistriesD.load(tmp_path)
    assert rd.lookaside_for(REF) == "https://exact"
    # the more specific section without lookaside falls through to the host section
    assert rd.lookaside_for(parse_reference("registry.example.com:5000/ns/app:2")) == "https://host-level"
    assert rd.use_sigstore_attachments(REF) is False
    assert rd.use_sigstore_attachments(parse_reference("registry.example.com:5000/x:1")) is True
    # a host with a port does not fall back to the port-less host
    assert rd.lookaside_for(parse_reference("registry.example.com/ns/app:1")) == "file:///default"
    assert RegistriesD.load(None, None).lookaside_for(REF) is None
    inline = RegistriesD.load(None, b"default-docker:\n  sigstore: file:///inline\n")
    assert inline.lookaside_for(REF) == "file:///inline"


@pytest.mark.parametrize(
    "text,match",
    [
        ("default-docker:\n  lookaside: a\n  lookaside: b\n", "duplicate key"),
        ("default-docker:\n  lookside: file:///x\n", "unknown field"),
        ("default-docker:\n  lookaside: ftp://x\n", "file://, http:// or https://"),
        ("default-docker:\n  lookaside: file:///x\n  sigstore: file:///y\n", "both lookaside"),
        ("default-docker:\n  use-sigstore-attachments: yes please\n", "boolean"),
        ("other: 1\n", "top level"),
        ("default-docker: [\n", "not valid YAML"),
    ],
)
def test_registries_d_strict(text: str, match: str) -> None:
    with pytest.raises(InvalidPolicy, match=match):
        RegistriesD.from_yaml(text.encode())


def test_registries_d_conflicts(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("default-docker:\n  lookaside: file:///a\n")
    (tmp_path / "b.yaml").write_text("default-docker:\n  lookaside: file:///b\n")
    with pytest.raises(InvalidPolicy, match="default-docker is defined in both"):
        RegistriesD.load(tmp_path)
    (tmp_path / "b.yaml").write_text("docker:\n  x.io:\n    lookaside: file:///b\n")
    (tmp_path / "c.yaml").write_text("docker:\n  x.io:\n    lookaside: file:///c\n")
    with pytest.raises(InvalidPolicy, match=r"defined in b\.yaml and c\.yaml"):
        RegistriesD.load(tmp_path)


async def test_file_lookaside_lists_until_the_first_gap(tmp_path: Path) -> None:
    d = tmp_path / f"ns/app@sha256={'d' * 64}"
    d.mkdir(parents=True)
    for n in (1, 2, 4):
        (d / f"signature-{n}").write_bytes(b"\x88sig%d" % n)
    (d / "signature-3").mkdir()  # unreadable as a file: an error, not "no more signatures"
    with pytest.raises(SignatureRejected, match="cannot read"):
        await fetch_lookaside(f"file://{tmp_path}", REF, D)
    (d / "signature-3").rmdir()
    assert await fetch_lookaside(f"file://{tmp_path}", REF, D) == [b"\x88sig1", b"\x88sig2"]
    (d / "signature-1").write_bytes(b"\x00simple-signing\n\x88wrapped")
    assert (await fetch_lookaside(f"file://{tmp_path}", REF, D))[0] == b"\x88wrapped"
    (d / "signature-1").write_bytes(b"\x00sigstore-json\n{}")
    with pytest.raises(SignatureRejected, match="storage format"):
        await fetch_lookaside(f"file://{tmp_path}", REF, D)


async def test_http_lookaside_and_registry_extension_with_mock_transport() -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        if req.url.path == "/v2/":
            return httpx.Response(200, headers={"X-Registry-Supports-Signatures": "1"})
        if req.url.path == f"/extensions/v2/ns/app/signatures/{D}":
            sigs = [
                {
                    "version": 2,
                    "type": "atomic",
                    "name": "x",
                    "content": base64.b64encode(b"\x88ext").decode(),
                },
                {"version": 2, "type": "other", "name": "y", "content": "AA=="},
            ]
            return httpx.Response(200, json={"signatures": sigs})
        if req.url.path == f"/look/ns/app@sha256={'d' * 64}/signature-1":
            return httpx.Response(200, content=b"\x88one")
        if req.url.path.startswith("/look/"):
            return httpx.Response(404)
        if req.url.path.startswith("/broken/"):
            return httpx.Response(500)
        return httpx.Response(404)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    reg = RegistryClient(http, insecure_registries=frozenset({"registry.example.com:5000"}))
    assert await fetch_registry_extension(reg, REF, D) == [b"\x88ext"]
    assert await fetch_lookaside("http://lookaside.example/look", REF, D, http) == [b"\x88one"]
    with pytest.raises(SignatureRejected, match="HTTP 500"):
        await fetch_lookaside("http://lookaside.example/broken", REF, D, http)
    no_ext = RegistryClient(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))))
    assert await fetch_registry_extension(no_ext, REF, D) == []


# ---------------------------------------------------------------------- gpg
needs_gpg = pytest.mark.skipif(have_tools("gpg", "gpgv") is not None, reason=str(have_tools("gpg", "gpgv")))

PAYLOAD = b'{"critical":{}}'


def sign(home_env: dict[str, str], fpr: str, tmp: Path, *args: str) -> bytes:
    (tmp / "payload").write_bytes(PAYLOAD)
    out = tmp / "signed"
    out.unlink(missing_ok=True)
    run(
        ["gpg", "--batch", "--yes", "--local-user", fpr, *args, "--output", str(out), str(tmp / "payload")],
        home_env,
    )
    return out.read_bytes()


@needs_gpg
def test_gpg_verdicts(tmp_path: Path) -> None:
    k = gpg_key(tmp_path / "k")
    other = gpg_key(tmp_path / "o", "o@example.invalid")
    blob = sign(k.env, k.fpr, tmp_path, "--sign")
    v = verify_signed_message(blob, k.pub.read_bytes())
    assert v.payload == PAYLOAD and v.primary_fingerprint == k.fpr
    # armored keyring, and a keyring holding several keys
    ring = dearmor_keyring(other.pub_asc.read_bytes() + b"\n" + k.pub_asc.read_bytes())
    assert verify_signed_message(blob, ring).payload == PAYLOAD
    with pytest.raises(SignatureRejected, match="not by a trusted key"):
        verify_signed_message(blob, other.pub.read_bytes())
    # cleartext signatures, armored messages and literal-only data are not signed messages
    for args in (("--clearsign",), ("--sign", "--armor")):
        with pytest.raises(SignatureRejected, match="not an OpenPGP signed message"):
            verify_signed_message(sign(k.env, k.fpr, tmp_path, *args), k.pub.read_bytes())
    (tmp_path / "payload").write_bytes(PAYLOAD)
    literal = run(["gpg", "--batch", "--yes", "--store", "--output", "-", str(tmp_path / "payload")], k.env)
    with pytest.raises(SignatureRejected, match=r"not an OpenPGP signed message|or is corrupt"):
        verify_signed_message(literal, k.pub.read_bytes())
    # a flipped byte in the signed content
    bad = bytearray(sign(k.env, k.fpr, tmp_path, "--sign", "--compress-algo", "none"))
    i = bytes(bad).find(PAYLOAD)
    bad[i + 2] ^= 0x01
    with pytest.raises(SignatureRejected):
        verify_signed_message(bytes(bad), k.pub.read_bytes())
    with pytest.raises(InvalidPolicy, match="neither a binary keyring"):
        dearmor_keyring(b"just text")


@needs_gpg
def test_gpg_expired_key(tmp_path: Path) -> None:
    """A key that expired after it signed: gpgv says EXPKEYSIG, which rejects (containers/image too)."""
    home = tmp_path / "k"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    past = ["--faked-system-time", "20200101T000000!"]
    run(
        [
            "gpg",
            "--batch",
            *past,
            "--passphrase",
            "",
            "--quick-gen-key",
            "old@example.invalid",
            "ed25519",
            "sign",
            "1d",
        ],
        env,
    )
    out = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env).decode()
    fpr = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))
    pub = run(["gpg", "--batch", "--export", fpr], env)
    blob = sign(env, fpr, tmp_path, *past, "--sign")
    with pytest.raises(SignatureRejected, match="made by a key that has expired"):
        verify_signed_message(blob, pub)


@needs_gpg
def test_gpg_compression_bomb_never_lands_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small signed message inflating to 16 MiB is refused once 4 MiB of content
    arrive, and the content is never written to disk (checked on every file left
    in gpgv's working directory as it is cleaned up)."""
    import tempfile

    from image_pull.trust.signatures import gpg

    k = gpg_key(tmp_path / "k")
    (tmp_path / "payload").write_bytes(b"\0" * (16 << 20))
    sign_bomb = ["gpg", "--batch", "--yes", "--local-user", k.fpr, "--compress-algo", "zlib", "-z", "9"]
    blob = run([*sign_bomb, "--sign", "--output", "-", str(tmp_path / "payload")], k.env)
    assert len(blob) < gpg.MAX_SIGNATURE_BYTES
    sizes: list[int] = []

    class Watched(tempfile.TemporaryDirectory[str]):
        def cleanup(self) -> None:
            sizes.extend(p.stat().st_size for p in Path(self.name).rglob("*") if p.is_file())
            super().cleanup()

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Watched)  # the one gpg.py uses
    with pytest.raises(SignatureRejected, match="signed content is larger than 4 MiB"):
        verify_signed_message(blob, k.pub.read_bytes())
    assert sizes and max(sizes) < gpg.MAX_SIGNATURE_BYTES


@pytest.mark.parametrize(
    "stream,match",
    [("status", "more than 64 KiB of status output"), ("stderr", "more than 64 KiB of diagnostics")],
)
def test_gpgv_output_flood_is_cut_off(tmp_path: Path, stream: str, match: str) -> None:
    """gpgv's status and diagnostic streams are read up to a limit, not into memory
    whole. Real gpgv cannot be made to write megabytes of status lines on demand,
    so a stand-in executable plays a gpgv that floods the stream it is given."""
    fake = tmp_path / "flooding-gpgv"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"fd = int(sys.argv[sys.argv.index('--status-fd') + 1]) if {stream == 'status'!r} else 2\n"
        "line = b'[GNUPG:] NEWSIG\\n' * 4096\n"
        "for _ in range(256):\n"
        "    os.write(fd, line)\n"
    )
    fake.chmod(0o755)
    with pytest.raises(SignatureRejected, match=match):
        verify_signed_message(b"\xa3\x01signed", b"\x99keyring", gpgv=str(fake))


async def test_kbs_key_refusal_keeps_its_reason() -> None:
    """A policy key the KBS refuses (PolicyDeny) says why, not only the exception type."""
    from image_pull.trust import TrustPolicy

    class PolicyDenied(Exception):
        pass

    async def getter(uri: str) -> bytes:
        raise PolicyDenied(f"KBS answered 401 PolicyDeny: Access denied by policy for {uri}")

    tp = TrustPolicy(b'{"default": [{"type": "insecureAcceptAnything"}]}', resource_getter=getter)
    with pytest.raises(InvalidPolicy) as ei:
        await tp._fetch_key("kbs:///default/keys/signer")
    assert "PolicyDenied: KBS answered 401 PolicyDeny: Access denied by policy" in str(ei.value)
