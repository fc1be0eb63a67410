"""``coco-image pull`` says when no signature is checked, and can refuse it; every
operator mistake names its cause and its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_pull.cli import main
from tests.image_pull.trust import helpers as h
from tests.support.registry import OciLayout, RegistryServer, free_port, layer_tar


def test_require_signature_without_policy_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["pull", "127.0.0.1:1/x:1", "--bundle", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"),
               "--require-signature"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "--require-signature needs --policy" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "w").exists()


def test_no_policy_warns_that_signatures_are_not_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the registry port is closed: the pull fails, but the warning came first
    rc = main(["pull", "127.0.0.1:1/x:1", "--bundle", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"),
               "--plain-http", "127.0.0.1:1", "--timeout", "20"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert lines[0] == (
        "coco-image pull: WARNING: no --policy: image signatures are NOT verified "
        "(pass --policy containers-policy.json; --require-signature makes this an error)"
    )


def test_help_shows_work_dir_default_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pull", "--help"])
    assert "/run/kata-containers/image" in capsys.readouterr().out.replace("\n", " ").replace("  ", "")
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("coco-image ")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs on the bundle's rootfs")
def test_mounted_bundle_names_the_release_command(tmp_path: Path) -> None:
    from image_pull.bundle import check_target
    from image_pull.errors import ImagePullError

    rootfs = tmp_path / "b" / "rootfs"
    rootfs.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(rootfs)], check=True)
    try:
        with pytest.raises(ImagePullError) as ei:
            check_target(tmp_path / "b")
        assert f"coco-image gc --release-bundle {tmp_path / 'b'}" in str(ei.value)
    finally:
        subprocess.run(["umount", str(rootfs)], check=False)


# ------------------------------------------------------------------ operator mistakes, against real peers
# (docker-registry, skopeo --sign-by with a file lookaside, gpg/gpgv)


@dataclass
class Signed:
    reg: RegistryServer
    tmp: Path
    key: h.GpgKey
    store: Path  # the lookaside
    read_d: Path  # registries.d naming it
    layer: str  # digest of ux/app's only layer


@pytest.fixture(scope="module")
def signed(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    if shutil.which("gpg") is None or shutil.which("gpgv") is None:
        pytest.skip("gpg/gpgv are not installed")
    tmp = tmp_path_factory.mktemp("msgs")
    key = h.gpg_key(tmp / "gpg")
    store, write_d, read_d = h.lookaside_dirs(tmp)
    lay = OciLayout(tmp / "layout")
    lay.image([(layer_tar([("hello", "file", b"hi\n", 0o644)]), "gzip")], tag="1")
    src = f"oci:{lay.path}:1"
    sign = ["--registries.d", str(write_d), "--sign-by", key.fpr]
    h.skopeo_copy(registry, src, "ux/app:1", [])
    h.skopeo_copy(registry, src, "ux/tampered:1", [])
    # ux/signed:2 carries a valid signature made for ux/signed:1 (another tag)
    h.skopeo_copy(registry, src, "ux/signed:2", [*sign, "--sign-identity", f"{registry.host}/ux/signed:1"],
                  key.env)  # fmt: skip
    h.skopeo_copy(registry, src, "ux/corrupt:1", sign, key.env)
    man = json.loads(h.get_manifest(registry, "ux/app", "1"))
    yield Signed(registry, tmp, key, store, read_d, man["layers"][0]["digest"])


def pull_cli(s: Signed, ref: str, name: str, *extra: str) -> list[str]:
    return ["pull", f"{s.reg.host}/{ref}", "--bundle", str(s.tmp / name / "b"), "--work-dir",
            str(s.tmp / name / "w"), "--auth-file", str(s.reg.authfile), "--plain-http", s.reg.host,
            "--snapshotter", "copy", "--timeout", "60", *extra]  # fmt: skip


def signed_by_policy(s: Signed, name: str, **extra: object) -> Path:
    req = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(s.key.pub), **extra}
    p = s.tmp / f"{name}.json"
    p.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {s.reg.host: [req]}}}))
    return p


def test_signature_for_another_tag_names_both_and_the_fix(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    host = signed.reg.host
    rc = main(pull_cli(signed, "ux/signed:2", "tag", "--policy", str(signed_by_policy(signed, "tag")),
                       "--registries-d", str(signed.read_d)))  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"signed for '{host}/ux/signed:1', the image is '{host}/ux/signed:2'" in err
    assert '"signedIdentity": {"type": "matchRepository"}' in err
    assert not (signed.tmp / "tag" / "b" / "config.json").exists()
    # the suggested policy accepts it
    pol = signed_by_policy(signed, "tag2", signedIdentity={"type": "matchRepository"})
    rc = main(
        pull_cli(signed, "ux/signed:2", "tag2", "--policy", str(pol), "--registries-d", str(signed.read_d))
    )
    assert rc == 0, capsys.readouterr().err
    assert (signed.tmp / "tag2" / "b" / "rootfs" / "hello").read_bytes() == b"hi\n"


def test_no_lookaside_names_registries_d_and_the_registry(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(pull_cli(signed, "ux/signed:2", "nolook", "--policy", str(signed_by_policy(signed, "nolook"))))
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        f"registries.d (--registries-d) configures no lookaside for {signed.reg.host}/ux/signed, "
        "and the registry serves no signatures through its signature extension"
    ) in err


def test_corrupt_signature_file_is_called_corrupt_not_a_gpgv_code(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    sigs = list(signed.store.glob("ux/corrupt@sha256=*/signature-1"))
    assert len(sigs) == 1
    blob = sigs[0].read_bytes()
    sigs[0].write_bytes(blob[: len(blob) // 2])  # cut short, as a damaged copy would be
    rc = main(pull_cli(signed, "ux/corrupt:1", "corrupt", "--policy", str(signed_by_policy(signed, "corrupt")),
                       "--registries-d", str(signed.read_d)))  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "the signature is not an OpenPGP signature or is corrupt" in err
    assert "NODATA" not in err


def test_layer_altered_in_the_registry_names_image_and_layer(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = json.loads(h.get_manifest(signed.reg, "ux/tampered", "1"))["layers"][0]["digest"]
    hexd = layer.split(":")[1]
    data = signed.reg.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    b = bytearray(data.read_bytes())
    b[len(b) // 2] ^= 0xFF
    data.write_bytes(bytes(b))
    rc = main(pull_cli(signed, "ux/tampered:1", "tampered"))
    err = capsys.readouterr().err
    assert rc == 1
    assert f"image {signed.reg.host}/ux/tampered:1, layer 1 of 1 ({layer}): " in err
    assert "the content is corrupt or was tampered with" in err
    assert not (signed.tmp / "tampered" / "b" / "config.json").exists()


def test_miscased_requirement_type_suggests_the_known_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"default": [{"type": "reject"}],
                               "transports": {"docker": {"127.0.0.1:1/ux": [{"type": "signedby"}]}}}))  # fmt: skip
    rc = main(["pull", "127.0.0.1:1/ux:1", "--bundle", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"),
               "--policy", str(pol)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0
    assert "unknown requirement type 'signedby' (did you mean 'signedBy'?)" in err


def test_tls_registry_hint_names_the_real_flags(
    tls_registry: RegistryServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = tls_registry.host
    rc = main(["pull", f"{host}/ux:1", "--bundle", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w"),
               "--timeout", "60"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"TLS handshake with {host} failed" in err
    assert "coco-image pull --ca-file CA.pem" in err and f"coco-image pull --plain-http {host}" in err
    # (coco-guest-pull simulate's own flag: tests/guest_pull/test_errors.py)


def test_wrong_port_says_connection_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    rc = main(["pull", f"127.0.0.1:{port}/ux:1", "--bundle", str(tmp_path / "b"), "--work-dir",
               str(tmp_path / "w"), "--plain-http", f"127.0.0.1:{port}", "--timeout", "60"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot connect to 127.0.0.1:{port} (connection refused): is the registry running" in err
    assert "ConnectError" not in err


def test_gpgv_nodata_is_called_corrupt(signed: Signed, tmp_path: Path) -> None:
    from image_pull.trust import SignatureRejected
    from image_pull.trust.signatures.gpg import verify_signed_message

    (tmp_path / "p").write_bytes(b"hello\n")
    h.run(["gpg", "--batch", "--yes", "--compress-level", "0", "--local-user", signed.key.fpr, "--sign",
           "--output", str(tmp_path / "s"), str(tmp_path / "p")], signed.key.env)  # fmt: skip
    good = (tmp_path / "s").read_bytes()
    assert verify_signed_message(good, signed.key.pub.read_bytes()).payload == b"hello\n"
    for bad in (good[: len(good) // 2], good[:1] + bytes(40)):
        with pytest.raises(SignatureRejected) as ei:
            verify_signed_message(bad, signed.key.pub.read_bytes())
        assert str(ei.value).startswith("the signature is not an OpenPGP signature or is corrupt")
