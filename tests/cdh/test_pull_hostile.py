"""PullImage inside the CDH daemon against a hostile registry (tests/support/hostile_registry.py):
the pull deadline applies when the ttRPC caller sends none, a content-coding bomb
stays bounded in the daemon's memory, and the CDH answers other calls throughout."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coco_rpc.protos import api_pb2
from image_pull.bundle import unmount
from tests.cdh.stack import Stack, start_stack
from tests.support.aa import ttrpc_call
from tests.support.hostile_registry import HostileRegistry
from tests.support.procfs import status_kib

pytestmark = pytest.mark.slow

PULL_TIMEOUT = 4


@pytest.fixture(scope="module")
def reg() -> Iterator[HostileRegistry]:
    r = HostileRegistry()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def stack(reg: HostileRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostilestack")
    with start_stack(tmp, cdh=False) as s:
        s.set_resource("default/test/plain", b"still answering")
        s.start_cdh(
            f'[image]\nwork_dir = "{tmp / "work"}"\npull_timeout = {PULL_TIMEOUT}\n'
            f'[[image.registry_config.registry]]\nprefix = "{reg.host}"\nlocation = "{reg.host}"\ninsecure = true\n'
        )
        yield s


def pull(stack: Stack, image: str, bundle: Path, *, deadline: bool) -> tuple[int, str]:
    assert stack.cdh_sock is not None
    req = api_pb2.ImagePullRequest(image_url=image, bundle_path=str(bundle)).SerializeToString()
    code, msg, _ = ttrpc_call(
        stack.cdh_sock, "api.ImagePullService", "PullImage", req, timeout=120, send_deadline=deadline
    )
    return code, msg


def get_resource(stack: Stack) -> bytes:
    assert stack.cdh_sock is not None
    req = api_pb2.GetResourceRequest(ResourcePath="kbs:///default/test/plain").SerializeToString()
    code, msg, out = ttrpc_call(stack.cdh_sock, "api.GetResourceService", "GetResource", req)
    assert code == 0, msg
    return bytes(api_pb2.GetResourceResponse.FromString(out).Resource)


def cdh_hwm(stack: Stack) -> int:
    """Peak RSS (VmHWM) of the CDH process so far, in bytes."""
    return status_kib(stack.procs[-1].pid, "VmHWM") * 1024


def test_deadline_applies_when_the_caller_sets_none(stack: Stack, reg: HostileRegistry) -> None:
    reg.fault("manifest", "trickle", times=1, interval=1.0)
    bundle = stack.tmp / "b-trickle"
    bundle.mkdir()
    result: list[tuple[int, str]] = []
    t = threading.Thread(target=lambda: result.append(pull(stack, reg.ref, bundle, deadline=False)))
    t.start()
    try:
        while t.is_alive() and reg.count("manifest") < 2:  # HEAD, then the trickled GET
            t.join(0.05)
        assert get_resource(stack) == b"still answering"  # served while the pull hangs
    finally:
        t.join(120)
    assert result, "PullImage never returned"
    code, msg = result[0]
    assert code != 0 and f"did not finish within {float(PULL_TIMEOUT)} s" in msg, msg
    assert not (bundle / "config.json").exists()


def test_content_coding_bomb_stays_bounded_in_the_daemon(stack: Stack, reg: HostileRegistry) -> None:
    co = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    gz = b"".join([*(co.compress(block) for _ in range(512)), co.flush()])  # 512 MiB of zeros
    inner = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    stacked = inner.compress(gz) + inner.flush()
    reg.fault("manifest", "encoding", times=1, coding="gzip, gzip", body=stacked)
    bundle = stack.tmp / "b-bomb"
    bundle.mkdir()
    code, msg = pull(stack, reg.ref, bundle, deadline=True)
    assert code != 0 and "Content-Encoding" in msg, msg
    assert cdh_hwm(stack) < 200 << 20, f"CDH peak RSS {cdh_hwm(stack) >> 20} MiB"
    assert get_resource(stack) == b"still answering"
    # and a normal pull still works afterwards
    bundle = stack.tmp / "b-ok"
    bundle.mkdir()
    try:
        code, msg = pull(stack, reg.ref, bundle, deadline=True)
        assert code == 0, msg + (stack.tmp / "cdh.log").read_text()[-1500:]
        assert (bundle / "rootfs" / "hello").read_bytes().startswith(b"hello")
    finally:
        if (bundle / "rootfs").is_mount():
            unmount(bundle / "rootfs")  # the puller overlay-mounts the rootfs when it can (root)
