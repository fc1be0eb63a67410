"""The spine, end to end: the README's `make demo` flow as a test, and the
failure cases the spine promises, each through the whole stack (KBS, AA and
CDH as processes, a real docker-registry with htpasswd auth).

Covered elsewhere at their own layer: wrong admin key, wrong nonce, tampered
JWE, unknown TEE and protocol version (tests/kbs, tests/kbs_client); digest
mismatch and truncated blobs (tests/image_pull)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coco_rpc.protos import api_pb2
from image_pull.bundle import unmount
from tests.cdh.stack import Stack, start_stack
from tests.support.aa import ttrpc_call
from tests.support.registry import OciLayout, RegistryServer, have_tools, layer_tar

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(have_tools() is not None, reason=str(have_tools())),
]


def test_make_demo_flow() -> None:
    """What `make demo` runs, asserted: it ends with `demo: OK <digest>`."""
    cp = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True, timeout=600
    )
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-3000:]
    last = [ln for ln in out.splitlines() if ln.startswith("demo: ")][-1]
    assert re.match(r"demo: OK sha256:[0-9a-f]{64} ", last), last
    assert "refused by the default policy" in out
    assert "rootfs/bin/app" in out and "rootfs/etc/release" in out


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    lay = OciLayout(tmp_path_factory.mktemp("layout") / "img")
    tar = layer_tar([("etc", "dir", None, 0o755), ("etc/hello", "file", b"spine\n", 0o644)])
    lay.image([(tar, "gzip")], tag="v1")
    registry.push(f"{lay.path}:v1", "spine/hello:v1")
    return f"{registry.host}/spine/hello:v1"


@pytest.fixture(scope="module")
def stack(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("spine")
    with start_stack(tmp, cdh=False) as s:
        s.set_resource("default/credentials/good", json.dumps(registry.auth_json()).encode())
        s.set_resource("default/credentials/bad", json.dumps(registry.auth_json(password="wrong")).encode())
        s.start_cdh(
            f'[image]\nwork_dir = "{tmp / "work"}"\n'
            'authenticated_registry_credentials_uri = "kbs:///default/credentials/bad"\n'
            f'[[image.registry_config.registry]]\nprefix = "{registry.host}"\n'
            f'location = "{registry.host}"\ninsecure = true\n'
        )
        yield s


def _pull(stack: Stack, image: str, bundle: Path) -> tuple[int, str]:
    assert stack.cdh_sock is not None
    bundle.mkdir(parents=True, exist_ok=True)
    req = api_pb2.ImagePullRequest(image_url=image, bundle_path=str(bundle)).SerializeToString()
    code, msg, _ = ttrpc_call(stack.cdh_sock, "api.ImagePullService", "PullImage", req, timeout=300)
    return code, msg


def _assert_no_bundle(bundle: Path) -> None:
    rootfs = bundle / "rootfs"
    try:
        assert not rootfs.is_mount(), "a failed pull left a mounted rootfs"
        assert not rootfs.exists() or not any(rootfs.iterdir()), "a failed pull left files in the rootfs"
    finally:
        if rootfs.is_mount():
            unmount(rootfs)


def test_wrong_registry_password_fails_cleanly(stack: Stack, image: str) -> None:
    bundle = stack.tmp / "b-badpw"
    code, msg = _pull(stack, image, bundle)
    assert code != 0
    assert msg.startswith("[CDH] [ERROR]: ")
    assert "wrong" not in msg  # the password from the auth file never reaches an error message
    _assert_no_bundle(bundle)


def test_policy_deny_refuses_credentials_and_pull(stack: Stack, image: str) -> None:
    stack.kbs_client("set-resource-policy", "--deny-all")
    try:
        code, msg, _ = ttrpc_call(
            stack.cdh_sock,  # type: ignore[arg-type]
            "api.GetResourceService",
            "GetResource",
            api_pb2.GetResourceRequest(ResourcePath="kbs:///default/credentials/good").SerializeToString(),
        )
        assert code != 0 and "[CDH] [ERROR]" in msg
        bundle = stack.tmp / "b-deny"
        code, _ = _pull(stack, image, bundle)
        assert code != 0
        _assert_no_bundle(bundle)
    finally:
        stack.kbs_client("set-resource-policy", "--allow-all")
