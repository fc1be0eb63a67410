"""PullImage end to end: a real docker-registry (htpasswd) holding an image
pushed with skopeo, registry credentials served by the reference KBS, the
attestation-agent, and the confidential-data-hub process pulling through
image_pull's engine. Called over hand-framed ttRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from coco_rpc.protos import api_pb2
from image_pull.bundle import unmount
from tests.cdh.stack import Stack, start_stack
from tests.support.aa import ttrpc_call
from tests.support.registry import OciLayout, RegistryServer, layer_tar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[RegistryServer, str]:
    lay = OciLayout(tmp_path_factory.mktemp("layout") / "img")
    tar = layer_tar([("etc", "dir", None, 0o755), ("etc/motd", "file", b"pulled by the CDH\n", 0o644)])
    desc = lay.image([(tar, "gzip")], tag="v1")
    registry.push(f"{lay.path}:v1", "cdh/hello:v1")
    return registry, desc["digest"]


@pytest.fixture(scope="module")
def stack(pushed: tuple[RegistryServer, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reg, _ = pushed
    tmp = tmp_path_factory.mktemp("pullstack")
    with start_stack(tmp, cdh=False) as s:
        s.set_resource("default/credential/test", json.dumps(reg.auth_json()).encode())
        s.start_cdh(
            f'[image]\nwork_dir = "{tmp / "work"}"\n'
            'authenticated_registry_credentials_uri = "kbs:///default/credential/test"\n'
            f'[[image.registry_config.registry]]\nprefix = "{reg.host}"\nlocation = "{reg.host}"\ninsecure = true\n'
        )
        yield s


def pull(stack: Stack, image: str, bundle: Path) -> tuple[int, str, str]:
    assert stack.cdh_sock is not None
    req = api_pb2.ImagePullRequest(image_url=image, bundle_path=str(bundle)).SerializeToString()
    code, msg, out = ttrpc_call(stack.cdh_sock, "api.ImagePullService", "PullImage", req, timeout=300)
    return code, msg, api_pb2.ImagePullResponse.FromString(out).manifest_digest if code == 0 else ""


def test_pull_image_with_kbs_credentials(stack: Stack, pushed: tuple[RegistryServer, str]) -> None:
    reg, digest = pushed
    bundle = stack.tmp / "bundle1"
    bundle.mkdir()
    try:
        code, msg, got = pull(stack, f"{reg.host}/cdh/hello:v1", bundle)
        assert code == 0, msg + (stack.tmp / "cdh.log").read_text()[-2000:]
        assert got == digest
        assert (bundle / "rootfs" / "etc" / "motd").read_bytes() == b"pulled by the CDH\n"
        assert (bundle / "config.json").exists()
    finally:
        if (bundle / "rootfs").is_mount():
            unmount(bundle / "rootfs")  # the puller overlay-mounts the rootfs when it can (root)
        assert not (bundle / "rootfs").is_mount()


def test_pull_missing_image_fails_cleanly(stack: Stack, pushed: tuple[RegistryServer, str]) -> None:
    reg, _ = pushed
    bundle = stack.tmp / "bundle2"
    bundle.mkdir()
    code, msg, _ = pull(stack, f"{reg.host}/cdh/nothere:v1", bundle)
    assert code == 13 and msg.startswith("[CDH] [ERROR]: Pull Image failed")
    rootfs = bundle / "rootfs"
    assert not rootfs.is_mount() and (not rootfs.exists() or not any(rootfs.iterdir()))
