"""Every file the CDH reads has a size limit: one byte over it is a clear error
of the reader's kind (the limits are lowered here where they are large)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cdh.image
import cdh.kbc
from cdh.config import MAX_CONFIG_BYTES, CdhImageConfig, load_config
from cdh.errors import CdhConfigError, ResourceError, SealedSecretError, SecureMountError
from cdh.image import ImagePullService
from cdh.kbc import OfflineFsKbc
from cdh.sealed_secret import MAX_KEY_FILE_BYTES, LocalKekProvider
from cdh.secure_mount import MAX_KEY_BYTES, SecureMounter
from tests.cdh.test_secure_mount import Recorder, env  # noqa: F401 (fixture)

TOO_LARGE = "larger than|too large"


def test_config_file(tmp_path: Path) -> None:
    p = tmp_path / "cdh.toml"
    p.write_bytes(b'[kbc]\nname = "offline_fs_kbc"\n' + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(CdhConfigError, match=TOO_LARGE):
        load_config(p, cmdline="", env={})


async def test_offline_resource_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "res.json"
    p.write_text('{"a/b/c": "eA=="}')
    monkeypatch.setattr(cdh.kbc, "MAX_OFFLINE_FILE_BYTES", p.stat().st_size - 1)
    with pytest.raises(ResourceError, match=TOO_LARGE):
        await OfflineFsKbc([p], env={}).get_resource("kbs:///a/b/c")
    monkeypatch.setattr(cdh.kbc, "MAX_OFFLINE_FILE_BYTES", p.stat().st_size)
    assert await OfflineFsKbc([p], env={}).get_resource("kbs:///a/b/c") == b"x"


async def test_kek_and_verification_key_files(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"k" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(SealedSecretError, match=TOO_LARGE):
        await LocalKekProvider(tmp_path).decrypt(b"\0" * 40, "big", {})


async def test_luks_key_file(env: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    kf = tmp_path / "key"
    kf.write_bytes(b"k" * (MAX_KEY_BYTES + 1))
    m = SecureMounter(runner=Recorder(), header_dir=env["headers"], mapper_dir=env["mapper"])
    opts = {
        "devicePath": str(env["dev"] / "vdb"),
        "sourceType": "encrypted",
        "encryptionType": "luks2",
        "targetType": "device",
        "key": f"file://{kf}",
    }
    with pytest.raises(SecureMountError, match="LUKS key"):
        await m.secure_mount("block-device", opts, str(tmp_path / "link"))


async def test_image_file_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text('{"default":[{"type":"reject"}]}')
    monkeypatch.setattr(cdh.image, "MAX_FILE_BYTES", pol.stat().st_size - 1)
    h = ImagePullService(
        CdhImageConfig(work_dir=tmp_path, image_security_policy_uri=f"file://{pol}"), resources=None, aa=None
    )
    with pytest.raises(CdhConfigError, match=TOO_LARGE):
        await h.build_config()
