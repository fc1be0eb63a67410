"""Agent side: Storage handling, pause bundle, CDH PullImage and UnsealSecret
over a real ttRPC socket (the CDH peer here is a small stand-in service; the
real CDH is exercised by `coco-guest-pull simulate`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from coco_rpc import Code, RpcError, bind
from coco_rpc.protos import api_pb2
from coco_rpc.ttrpc import TtrpcServer
from guest_pull.agent import (
    CdhClient,
    ImagePullHandler,
    image_pull_volume,
    is_sealed_secret_source,
    unseal_env,
    unseal_sealed_mounts,
)
from guest_pull.errors import AgentError, PullFailed
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
    with pytest.raises(PullFailed, match="not found") as info:
        await h.create_device(bad, CID)
    # typed: the image and CDH's ttRPC error travel with it (the cause, not only its text)
    assert info.value.image == "registry.invalid/missing:1"
    assert isinstance(info.value.__cause__, RpcError) and info.value.__cause__.code == Code.INTERNAL
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
    with pytest.raises(AgentError, match="JSON object"):
        image_pull_volume(Storage("image_guest_pull", ("image_guest_pull=[]",), "x", "overlay", (), "/m"))


async def test_image_guest_pull_without_metadata_is_pulled(tmp_path: Path, cdh: Any) -> None:
    """runtime-rs sends image_guest_pull={} when the merged metadata is empty; the
    Kata agent defaults the map (serde default) and pulls the image."""
    fake, client = cdh
    st = Storage("image_guest_pull", ("image_guest_pull={}",), "example.com/app:1", "overlay", (), "/m")
    assert dict(image_pull_volume(st).metadata) == {}
    h = ImagePullHandler(client, run_dir=tmp_path / "run")
    assert await h.create_device(st, CID) == tmp_path / "run" / CID / "rootfs"
    assert fake.pulls == [("example.com/app:1", str(tmp_path / "run" / CID))]


async def test_sealed_env(cdh: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="guest_pull")
    _, client = cdh
    env = ["PATH=/bin", "TOKEN=sealed.good.xyz", "EMPTY="]
    assert await unseal_env(client, env) == ["PATH=/bin", "TOKEN=plain:xyz", "EMPTY="]
    # as the Kata agent: a secret CDH refuses is logged and keeps its sealed value
    assert await unseal_env(client, ["BAD=sealed.forged", "OK=sealed.good.123"]) == [
        "BAD=sealed.forged",
        "OK=plain:123",
    ]
    assert "BAD" in caplog.text and "unseal failed" in caplog.text


def _secret_volume(shared: Path, name: str) -> Path:
    """A Kubernetes secret volume as kubelet lays it out, shared into the guest."""
    vol = shared / f"{CID}-75490e32e51da3ff-{name}"
    data = vol / "..2024_09_30_02_55_58.2237819815"
    data.mkdir(parents=True)
    (vol / "..data").symlink_to(data.name)
    return vol


async def test_sealed_volume_files(tmp_path: Path, cdh: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="guest_pull")
    _, client = cdh
    shared = tmp_path / "shared" / "containers"
    vol = _secret_volume(shared, "mysecret")
    ts = next(vol.glob("..2024*"))
    (ts / "key").write_bytes(b"sealed.good.abc")
    (ts / "key").chmod(0o644)
    (ts / "plain").write_bytes(b"not sealed")
    (ts / "forged").write_bytes(b"sealed.forged")
    for n in ("key", "plain", "forged"):
        (vol / n).symlink_to(f"..data/{n}")
    (vol / "direct").write_bytes(b"sealed.good.dir")  # a plain file entry
    outside = tmp_path / "outside"
    outside.write_bytes(b"sealed.good.out")
    (vol / "escape").symlink_to(outside)
    hosts = shared / f"{CID}-75490e32e51da3ff-hosts"
    hosts.mkdir()
    (hosts / "h").write_bytes(b"sealed.good.hst")  # the runtime's own mounts are never searched
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "k").write_bytes(b"sealed.good.els")  # not shared from the host: left alone
    mounts = [
        {"destination": "/etc/secret", "source": str(vol), "type": "bind"},
        {"destination": "/etc/hosts", "source": str(hosts), "type": "bind"},
        {"destination": "/data", "source": str(elsewhere), "type": "bind"},
        {"destination": "/etc/missing", "source": str(shared / "gone"), "type": "bind"},
    ]
    out = await unseal_sealed_mounts(client, mounts, shared_dir=PurePosixPath(shared))
    assert out == mounts  # destinations unchanged
    # the entry is re-pointed at <file>.unsealed beside the sealed file, which stays
    assert os.readlink(vol / "key") == f"{ts.name}/key.unsealed"
    assert (vol / "key").read_bytes() == b"plain:abc"
    assert (ts / "key").read_bytes() == b"sealed.good.abc"
    assert ((ts / "key.unsealed").stat().st_mode & 0o777) == 0o644
    assert os.readlink(vol / "direct") == "direct.unsealed" and (vol / "direct").read_bytes() == b"plain:dir"
    assert (vol / "plain").read_bytes() == b"not sealed" and os.readlink(vol / "plain") == "..data/plain"
    # a failure only warns and keeps the sealed value; the other secrets are still unsealed
    assert (vol / "forged").read_bytes() == b"sealed.forged" and "forged" in caplog.text
    assert outside.read_bytes() == b"sealed.good.out" and os.readlink(vol / "escape") == str(outside)
    assert (hosts / "h").read_bytes() == b"sealed.good.hst"
    assert (elsewhere / "k").read_bytes() == b"sealed.good.els"
    # a second pass (the same volume for another container) changes nothing
    before = {p.name: os.readlink(p) for p in vol.iterdir() if p.is_symlink()}
    await unseal_sealed_mounts(client, mounts, shared_dir=PurePosixPath(shared))
    assert {p.name: os.readlink(p) for p in vol.iterdir() if p.is_symlink()} == before


def test_sealed_secret_sources_as_kata() -> None:
    base = "/run/kata-containers/shared/containers/"
    assert is_sealed_secret_source(base + f"{CID}-75490e32e51da3ff-mysecret")
    for own in ("resolv.conf", "termination-log", "hostname", "hosts", "serviceaccount"):
        assert not is_sealed_secret_source(base + f"{CID}-75490e32e51da3ff-{own}")
    assert not is_sealed_secret_source("/run/kata-containers/sandbox/shm")


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
    tmp_path: Path, cdh: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="guest_pull")
    # a failed write or re-link must not leave the unsealed plaintext behind, nor stop the container
    _, client = cdh
    shared = tmp_path / "shared"
    vol = shared / "c-1-vol"
    vol.mkdir(parents=True)
    (vol / "key").write_bytes(b"sealed.good.abc")
    real_replace = os.replace
    calls = [0]

    def refuse(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] in (1, 3):  # the plaintext file, then (next pass) the link
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", refuse)
    mounts = [{"destination": "/etc/secret", "source": str(vol), "type": "bind"}]
    for _ in range(2):
        assert await unseal_sealed_mounts(client, mounts, shared_dir=PurePosixPath(shared)) == mounts
        assert sorted(p.name for p in vol.iterdir()) == ["key"]
        assert (vol / "key").read_bytes() == b"sealed.good.abc" and not (vol / "key").is_symlink()
    assert calls[0] == 3 and caplog.text.count("No space left") == 2
