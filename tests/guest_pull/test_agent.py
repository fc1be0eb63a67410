"""Agent side: Storage handling, pause bundle, CDH PullImage and UnsealSecret
over a real ttRPC socket (the CDH peer here is a small stand-in service; the
real CDH is exercised by `coco-guest-pull simulate`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from coco_rpc import Code, RpcError, bind
from coco_rpc.protos import api_pb2
from coco_rpc.ttrpc import TtrpcServer
from guest_pull.agent import (
    CdhClient,
    ImagePullHandler,
    image_pull_volume,
    unseal_env,
    unseal_sealed_mounts,
)
from guest_pull.errors import AgentError
from guest_pull.host import guest_pull_storages
from guest_pull.storage import Storage

CID = "c0ffee"


class FakeCdh:
    def __init__(self) -> None:
        self.pulls: list[tuple[str, str]] = []
        self.delay = 0.0

    async def PullImage(self, req: api_pb2.ImagePullRequest) -> api_pb2.ImagePullResponse:
        await asyncio.sleep(self.delay)
        if req.image_url == "registry.invalid/missing:1":
            raise RpcError(Code.INTERNAL, "[CDH] [ERROR]: Image Pull error: not found")
        self.pulls.append((req.image_url, req.bundle_path))
        (Path(req.bundle_path) / "rootfs").mkdir(parents=True, exist_ok=True)
        return api_pb2.ImagePullResponse(manifest_digest="sha256:" + "ab" * 32)

    async def UnsealSecret(self, req: api_pb2.UnsealSecretInput) -> api_pb2.UnsealSecretOutput:
        if not req.secret.startswith(b"sealed.good"):
            raise RpcError(Code.INTERNAL, "[CDH] [ERROR]: unseal failed")
        return api_pb2.UnsealSecretOutput(plaintext=b"plain:" + req.secret[-3:])


@pytest.fixture
async def cdh(tmp_path: Path) -> Any:
    fake = FakeCdh()
    services = [
        bind(api_pb2.DESCRIPTOR.services_by_name["ImagePullService"], fake),
        bind(api_pb2.DESCRIPTOR.services_by_name["SealedSecretService"], fake),
    ]
    sock = tmp_path / "cdh.sock"
    srv = TtrpcServer(sock, services)
    await srv.start()
    yield fake, CdhClient(f"unix://{sock}")
    await srv.close()


def _storage(ann: dict[str, str]) -> Storage:
    (s,) = guest_pull_storages(CID, ann, [], force_guest_pull=True)
    return s


CONTAINER = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "example.com/app:1",
}
SANDBOX = {
    "io.kubernetes.cri.container-type": "sandbox",
    "io.katacontainers.pkg.oci.container_type": "pod_sandbox",
}


async def test_container_is_pulled_by_cdh(tmp_path: Path, cdh: Any) -> None:
    fake, client = cdh
    h = ImagePullHandler(client, run_dir=tmp_path / "run", pause_bundle=tmp_path / "none")
    rootfs = await h.create_device(_storage(CONTAINER), CID)
    assert rootfs == tmp_path / "run" / CID / "rootfs"
    assert fake.pulls == [("example.com/app:1", str(tmp_path / "run" / CID))]


async def test_pull_failure_and_timeout(tmp_path: Path, cdh: Any) -> None:
    fake, client = cdh
    h = ImagePullHandler(client, run_dir=tmp_path / "run")
    bad = _storage({**CONTAINER, "io.kubernetes.cri.image-name": "registry.invalid/missing:1"})
    with pytest.raises(AgentError, match="not found"):
        await h.create_device(bad, CID)
    fake.delay = 2.0
    slow = ImagePullHandler(client, run_dir=tmp_path / "run", image_pull_timeout=0.3)
    with pytest.raises(AgentError, match="PullImage"):
        await slow.create_device(_storage(CONTAINER), CID)
    with pytest.raises(AgentError, match="not running"):
        await ImagePullHandler(None, run_dir=tmp_path / "run").create_device(_storage(CONTAINER), CID)


def _pause_bundle(root: Path) -> Path:
    b = root / "pause_bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "config.json").write_text(json.dumps({"process": {"args": ["/pause"]}}))
    (b / "rootfs" / "pause").write_bytes(b"\x7fELF pause")
    (b / "rootfs" / "pause").chmod(0o755)
    return b


async def test_sandbox_uses_pause_bundle(tmp_path: Path, cdh: Any) -> None:
    fake, client = cdh
    h = ImagePullHandler(client, run_dir=tmp_path / "run", pause_bundle=_pause_bundle(tmp_path))
    rootfs = await h.create_device(_storage(SANDBOX), CID)
    assert rootfs == tmp_path / "run" / CID / "rootfs"
    assert (rootfs / "pause").read_bytes() == b"\x7fELF pause"
    assert (rootfs / "pause").stat().st_mode & 0o111
    assert json.loads((tmp_path / "run" / CID / "config.json").read_text())["process"]["args"] == ["/pause"]
    assert fake.pulls == []


async def test_pause_bundle_errors(tmp_path: Path) -> None:
    b = _pause_bundle(tmp_path)
    h = ImagePullHandler(None, run_dir=tmp_path / "run", pause_bundle=b)
    (b / "config.json").write_text(json.dumps({"process": {"args": ["/../../etc/passwd"]}}))
    with pytest.raises(AgentError, match=r"without '\.\.'"):
        h.unpack_pause(CID)
    (b / "config.json").write_text(json.dumps({"process": {}}))
    with pytest.raises(AgentError, match="args"):
        h.unpack_pause(CID)
    with pytest.raises(AgentError, match="cannot read"):
        ImagePullHandler(None, run_dir=tmp_path / "run", pause_bundle=tmp_path / "nope").unpack_pause(CID)


def test_driver_options_errors() -> None:
    base = _storage(CONTAINER)
    with pytest.raises(AgentError, match="missing the 'image_guest_pull=' entry"):
        image_pull_volume(Storage("image_guest_pull", ('{"metadata":{}}',), "x", "overlay", (), "/m"))
    with pytest.raises(AgentError, match="not JSON"):
        image_pull_volume(Storage("image_guest_pull", ("image_guest_pull={",), "x", "overlay", (), "/m"))
    with pytest.raises(AgentError, match="metadata map"):
        image_pull_volume(
            Storage("image_guest_pull", ('image_guest_pull={"metadata":1}',), "x", "overlay", (), "/m")
        )
    with pytest.raises(AgentError, match="driver"):
        image_pull_volume(Storage("blk", base.driver_options, "x", "overlay", (), "/m"))
    # the options come from the (untrusted) host: strict JSON, typed errors only
    for value in ('{"metadata":{"a":"1"},"metadata":{}}', "[" * 100_000 + "]" * 100_000):
        with pytest.raises(AgentError, match="not JSON"):
            image_pull_volume(
                Storage("image_guest_pull", (f"image_guest_pull={value}",), "x", "overlay", (), "/m")
            )
    assert image_pull_volume(base).metadata["io.kubernetes.cri.image-name"] == "example.com/app:1"


async def test_sealed_env(cdh: Any) -> None:
    _, client = cdh
    env = ["PATH=/bin", "TOKEN=sealed.good.xyz", "EMPTY="]
    assert await unseal_env(client, env) == ["PATH=/bin", "TOKEN=plain:xyz", "EMPTY="]
    with pytest.raises(AgentError, match="BAD"):
        await unseal_env(client, ["BAD=sealed.forged"])


async def test_sealed_volume_files(tmp_path: Path, cdh: Any) -> None:
    _, client = cdh
    vol = tmp_path / "secret-vol"
    data = vol / "..data"
    data.mkdir(parents=True)
    (data / "key").write_bytes(b"sealed.good.abc")
    (data / "plain").write_bytes(b"not sealed")
    (vol / "key").symlink_to("..data/key")
    (vol / "plain").symlink_to("..data/plain")
    outside = tmp_path / "outside"
    outside.write_bytes(b"sealed.good.out")
    (vol / "escape").symlink_to(outside)
    mounts = [
        {"destination": "/sealed/etc/secret", "source": str(vol), "type": "bind"},
        {"destination": "/etc/other", "source": "/nowhere", "type": "bind"},
    ]
    out = await unseal_sealed_mounts(client, mounts)
    assert [m["destination"] for m in out] == ["/etc/secret", "/etc/other"]
    assert (vol / "key").read_bytes() == b"plain:abc"
    assert (vol / "plain").read_bytes() == b"not sealed"
    assert outside.read_bytes() == b"sealed.good.out"  # not followed outside the volume


async def test_timeout_from_kernel_params(tmp_path: Path, cdh: Any) -> None:
    from guest_pull.kernel_params import parse_kernel_params

    fake, client = cdh
    fake.delay = 2.0
    h = ImagePullHandler.from_kernel_params(parse_kernel_params("agent.image_pull_timeout=1"), client,
                                            run_dir=tmp_path / "run")  # fmt: skip
    assert h.image_pull_timeout == 1
    with pytest.raises(AgentError, match="PullImage"):
        await h.create_device(_storage(CONTAINER), CID)


async def test_sealed_volume_write_failure_leaves_no_plaintext(
    tmp_path: Path, cdh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a failed replace must not leave the unsealed plaintext behind in a temp file
    _, client = cdh
    vol = tmp_path / "secret-vol"
    vol.mkdir()
    (vol / "key").write_bytes(b"sealed.good.abc")

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    mounts = [{"destination": "/sealed/etc/secret", "source": str(vol), "type": "bind"}]
    with pytest.raises(AgentError, match="key"):
        await unseal_sealed_mounts(client, mounts)
    assert sorted(p.name for p in vol.iterdir()) == ["key"]
    assert (vol / "key").read_bytes() == b"sealed.good.abc"
