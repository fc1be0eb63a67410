"""``coco-image pull`` says when no signature is checked, and can refuse it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from image_pull.cli import main


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
async def test_mounted_bundle_names_the_release_command(tmp_path: Path) -> None:
    from image_pull.errors import ImagePullError
    from image_pull.puller import ImagePuller, PullerConfig

    rootfs = tmp_path / "b" / "rootfs"
    rootfs.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(rootfs)], check=True)
    try:
        async with ImagePuller(PullerConfig(work_dir=tmp_path / "w")) as puller:
            with pytest.raises(ImagePullError) as ei:
                puller._check_bundle_target(tmp_path / "b")
        assert f"coco-image gc --release-bundle {tmp_path / 'b'}" in str(ei.value)
    finally:
        subprocess.run(["umount", str(rootfs)], check=False)
