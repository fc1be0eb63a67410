"""The confidential-data-hub console script as a process (offline_fs_kbc), and
credential prefetch."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdh.config import CdhConfig, KbcConfig, load_config
from cdh.errors import CdhConfigError, ResourceError
from cdh.hub import Hub
from coco_rpc.protos import api_pb2, ttrpc_pb2
from tests.cdh.conftest import DictResources
from tests.cdh.stack import unix_listening
from tests.support.aa import ttrpc_call

CDH = str(Path(sys.executable).parent / "confidential-data-hub")


def test_cdh_process_offline_fs(tmp_path: Path) -> None:
    store = tmp_path / "res.json"
    store.write_text(json.dumps({"default/k/v": base64.b64encode(b"offline-value").decode()}))
    sock = tmp_path / "cdh.sock"
    (tmp_path / "cdh.toml").write_text(
        f'socket = "unix://{sock}"\n[aa]\naa_socket = "unix://{tmp_path}/aa.sock"\n[kbc]\nname = "offline_fs_kbc"\n'
    )
    env = {
        **os.environ,
        "OFFLINE_FS_KBC_EXTRA_FILE_PATH": str(store),
        "OCICRYPT_KEYPROVIDER_CONFIG": str(tmp_path / "oc.json"),
    }
    env.pop("AA_KBC_PARAMS", None)
    log = (tmp_path / "cdh.log").open("wb")
    proc = subprocess.Popen(
        [CDH, "-c", str(tmp_path / "cdh.toml")], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        for _ in range(300):
            if unix_listening(sock) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert unix_listening(sock), (tmp_path / "cdh.log").read_text()
        # connected while the CDH holds its socket without the services (the Kata
        # agent connects at start and calls later): served after the first request
        early = socket.socket(socket.AF_UNIX)
        early.settimeout(30)
        early.connect(str(sock))
        req = api_pb2.GetResourceRequest(ResourcePath="kbs:///default/k/v").SerializeToString()
        code, msg, out = ttrpc_call(sock, "api.GetResourceService", "GetResource", req)
        assert code == 0, msg
        assert api_pb2.GetResourceResponse.FromString(out).Resource == b"offline-value"
        with early:
            frame = ttrpc_pb2.Request(
                service="api.GetResourceService", method="GetResource", payload=req
            ).SerializeToString()
            early.sendall(struct.pack(">IIBB", len(frame), 1, 1, 0) + frame)
            resp = ttrpc_pb2.Response.FromString(_frame_body(early))
        assert resp.status.code == 0, resp.status.message
        assert api_pb2.GetResourceResponse.FromString(resp.payload).Resource == b"offline-value"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not sock.exists()  # socket removed on shutdown


def _frame_body(s: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "the CDH closed the connection"
            buf += chunk
        return buf

    return exactly(struct.unpack(">IIBB", exactly(10))[0])


def test_cdh_stops_cleanly_before_any_request(tmp_path: Path) -> None:
    sock = tmp_path / "cdh.sock"
    (tmp_path / "cdh.toml").write_text(
        f'socket = "unix://{sock}"\n[aa]\naa_socket = "unix://{tmp_path}/aa.sock"\n[kbc]\nname = "offline_fs_kbc"\n'
    )
    env = {**os.environ, "OCICRYPT_KEYPROVIDER_CONFIG": str(tmp_path / "oc.json")}
    env.pop("AA_KBC_PARAMS", None)
    proc = subprocess.Popen([CDH, "-c", str(tmp_path / "cdh.toml")], stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(300):
            if unix_listening(sock) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert unix_listening(sock)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not sock.exists()


def test_cdh_process_unknown_kbc(tmp_path: Path) -> None:
    """Upstream's hub start-up creates the KBS client and fails on an unknown
    name (kms plugins/kbs KbcClient::new); the same text here."""
    (tmp_path / "cdh.toml").write_text(f'socket = "unix://{tmp_path}/cdh.sock"\n[kbc]\nname = "nope_kbc"\n')
    env = {**os.environ, "OCICRYPT_KEYPROVIDER_CONFIG": str(tmp_path / "oc.json")}
    env.pop("AA_KBC_PARAMS", None)
    cp = subprocess.run([CDH, "-c", str(tmp_path / "cdh.toml")], capture_output=True, timeout=60, env=env)
    assert cp.returncode == 1, cp.stderr
    assert (
        b"unknown kbc name nope_kbc, only support `cc_kbc`(feature `kbs`) and `offline_fs_kbc`." in cp.stderr
    )
    assert not (tmp_path / "cdh.sock").exists()


def test_unknown_kbc_in_hub() -> None:
    cfg = CdhConfig(kbc=KbcConfig("foo_kbc"))
    with pytest.raises(CdhConfigError, match="kbs client creation failed: unknown kbc name foo_kbc"):
        Hub(cfg, env={})


async def test_cc_kbc_without_url_starts_and_fails_at_first_use() -> None:
    hub = Hub(CdhConfig(kbc=KbcConfig("cc_kbc", "")), env={})
    try:
        with pytest.raises(ResourceError, match="relative URL without a base"):
            await hub.get_resource("kbs:///default/k/v")
    finally:
        await hub.close()


async def test_prefetch_credentials(tmp_path: Path) -> None:
    cfg_path = tmp_path / "cdh.toml"
    cfg_path.write_text(
        '[kbc]\nname = "offline_fs_kbc"\n[[credentials]]\nresource_uri = "kbs:///default/cred/a"\n'
        'path = "/run/confidential-containers/cdh/kbs/aliyun/a.json"\n'
    )
    cfg = load_config(
        cfg_path,
        cmdline="cdh.kbs_resources=kbs:///default/cred/b::/run/confidential-containers/cdh/kbs/b",
        env={},
    )
    hub = Hub(cfg, resources=DictResources({"kbs:///default/cred/a": b"A", "kbs:///default/cred/b": b"B"}))
    await hub.prefetch_credentials(root=tmp_path)
    a = tmp_path / "run/confidential-containers/cdh/kbs/aliyun/a.json"
    assert a.read_bytes() == b"A" and oct(a.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "run/confidential-containers/cdh/kbs/b").read_bytes() == b"B"
    hub2 = Hub(cfg, resources=DictResources({"kbs:///default/cred/a": b"A"}))
    with pytest.raises(ResourceError, match="kbs:///default/cred/b"):
        await hub2.prefetch_credentials(root=tmp_path / "other")


async def test_prefetch_does_not_write_through_a_planted_symlink(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        cmdline="cdh.kbs_resources=kbs:///default/cred/a::/run/confidential-containers/cdh/kbs/a",
        env={},
    )
    d = tmp_path / "run/confidential-containers/cdh/kbs"
    d.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (d / ".a.tmp").symlink_to(victim)  # a leftover/planted temporary name
    hub = Hub(cfg, resources=DictResources({"kbs:///default/cred/a": b"CRED"}))
    await hub.prefetch_credentials(root=tmp_path)
    assert victim.read_bytes() == b"untouched"
    assert (d / "a").read_bytes() == b"CRED" and not (d / "a").is_symlink()


async def test_prefetch_write_failure_is_a_resource_error(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        cmdline="cdh.kbs_resources=kbs:///default/cred/a::/run/confidential-containers/cdh/kbs/d/a",
        env={},
    )
    (tmp_path / "run/confidential-containers/cdh/kbs").mkdir(parents=True)
    (tmp_path / "run/confidential-containers/cdh/kbs/d").write_text("a file where a directory must be")
    hub = Hub(cfg, resources=DictResources({"kbs:///default/cred/a": b"CRED"}))
    with pytest.raises(ResourceError, match="cannot write credential"):
        await hub.prefetch_credentials(root=tmp_path)
