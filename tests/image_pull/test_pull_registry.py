"""End-to-end pulls from a real docker-registry (htpasswd, TLS, token auth),
with images built by umoci and skopeo, plus fault injection: cut connections,
kill -9 mid-pull, a full disk, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from image_pull.errors import (
    AuthError,
    BundleError,
    DigestMismatch,
    InsufficientSpace,
    NoMatchingPlatform,
    NotFound,
    PullTimeout,
    RegistryError,
    StoreError,
    UnpackError,
)
from image_pull.progress import ProgressEvent
from image_pull.puller import ImagePuller, PullerConfig
from image_pull.reference import parse_reference
from tests.support.faultproxy import FaultProxy
from tests.support.registry import OciLayout, RegistryServer, layer_tar, umoci_image

PAYLOAD = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(9375))  # 300,000 bytes
ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not ROOT, reason="needs root: overlay mounts, chown of image files, tmpfs mounts"),
]


def standard_layers(payload: bytes = PAYLOAD) -> list[bytes]:
    return [
        layer_tar(
            [
                ("etc", "dir", None, 0o755),
                ("etc/keep.txt", "file", b"keep\n", 0o644),
                ("etc/gone.txt", "file", b"gone\n", 0o644),
                (
                    "etc/passwd",
                    "file",
                    b"root:x:0:0::/root:/bin/sh\napp:x:1234:4321::/home/app:/bin/sh\n",
                    0o644,
                ),
                ("etc/group", "file", b"root:x:0:\nstaff:x:50:\n", 0o644),
                ("opq", "dir", None, 0o755),
                ("opq/lower.txt", "file", b"lower\n", 0o644),
                ("bin", "dir", None, 0o755),
                ("bin/app", "file", payload, 0o4755),
            ]
        ),
        layer_tar(
            [
                ("etc", "dir", None, 0o755),
                ("etc/.wh.gone.txt", "file", b"", 0o644),
                ("etc/link", "symlink", "keep.txt", 0o777),
                ("etc/hard", "hardlink", "bin/app", 0o4755),
                ("opq", "dir", None, 0o755),
                ("opq/.wh..wh..opq", "file", b"", 0o644),
                ("opq/upper.txt", "file", b"upper\n", 0o644),
            ]
        ),
    ]


def check_rootfs(rootfs: Path, payload: bytes = PAYLOAD) -> None:
    assert (rootfs / "bin/app").read_bytes() == payload
    assert (rootfs / "bin/app").stat().st_mode & stat.S_ISUID
    assert (rootfs / "etc/keep.txt").read_text() == "keep\n"
    assert not (rootfs / "etc/gone.txt").exists()
    assert os.readlink(rootfs / "etc/link") == "keep.txt"
    assert (rootfs / "etc/hard").stat().st_ino == (rootfs / "bin/app").stat().st_ino
    assert not (rootfs / "opq/lower.txt").exists()
    assert (rootfs / "opq/upper.txt").read_text() == "upper\n"


@pytest.fixture(scope="module")
def images(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Push the test images once per module; returns name -> reference."""
    tmp = tmp_path_factory.mktemp("images")
    out: dict[str, str] = {}
    std = umoci_image(tmp, "std", standard_layers(), extra_config=["--config.user", "app:staff"])
    registry.push(std, "t/std:1")
    out["std"] = f"{registry.host}/t/std:1"

    lay = OciLayout(tmp / "mixed")
    layers = [
        (layer_tar([("z", "dir", None, 0o755), ("z/zstd.txt", "file", b"zstd layer\n", 0o644)]), "zstd"),
        (layer_tar([("p", "dir", None, 0o755), ("p/plain.txt", "file", b"plain layer\n", 0o644)]), "none"),
        (layer_tar([("g", "dir", None, 0o755), ("g/gzip.txt", "file", b"gzip layer\n", 0o644)]), "gzip"),
    ]
    amd = lay.image(layers, arch="amd64", tag=None)
    arm = lay.image([(layer_tar([("arch", "file", b"arm64\n", 0o644)]), "gzip")], arch="arm64", tag=None)
    lay.image_index([amd, arm], "multi")
    registry.push(f"{lay.path}:multi", "t/mixed:multi", extra=["--all"])
    out["mixed"] = f"{registry.host}/t/mixed:multi"

    bad = OciLayout(tmp / "baddiff")
    desc = bad.image([(layer_tar([("f", "file", b"x", 0o644)]), "gzip")], tag="v1")
    # rewrite the config with a wrong diff_id, keeping everything else valid
    man = json.loads((bad.path / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes())
    cfgp = bad.path / "blobs/sha256" / man["config"]["digest"].split(":")[1]
    cfg = json.loads(cfgp.read_bytes())
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    man["config"] = {**man["config"], **bad.blob(json.dumps(cfg).encode())}
    bad.index = []
    mdesc = {"mediaType": man["mediaType"], **bad.blob(json.dumps(man).encode())}
    bad.index.append({**mdesc, "annotations": {"org.opencontainers.image.ref.name": "v1"}})
    bad.write_index()
    registry.push(f"{bad.path}:v1", "t/baddiff:1")
    out["baddiff"] = f"{registry.host}/t/baddiff:1"

    bomb = OciLayout(tmp / "bomb")
    bomb.image([(layer_tar([("zeros", "file", bytes(64 << 20), 0o644)]), "gzip")], tag="v1")
    registry.push(f"{bomb.path}:v1", "t/bomb:1")
    out["bomb"] = f"{registry.host}/t/bomb:1"

    big = OciLayout(tmp / "big")
    blob = os.urandom(24 << 20)
    big.image([(layer_tar([("big.bin", "file", blob, 0o644)]), "gzip")], tag="v1")
    registry.push(f"{big.path}:v1", "t/big:1")
    out["big"] = f"{registry.host}/t/big:1"
    return out


def config_for(registry: RegistryServer, work: Path, **kw: Any) -> PullerConfig:
    base: dict[str, Any] = {
        "work_dir": work,
        "auth_json": registry.authfile.read_bytes(),
        "insecure_registries": frozenset({registry.host}),
    }
    base.update(kw)
    return PullerConfig(**base)


def config_via(registry: RegistryServer, proxy: FaultProxy, work: Path, **kw: Any) -> PullerConfig:
    """Pull config for ``registry`` reached through ``proxy`` (its credentials keyed by the proxy)."""
    return config_for(
        registry,
        work,
        auth_json=json.dumps(registry.auth_json(key=proxy.host)).encode(),
        insecure_registries=frozenset({proxy.host}),
        **kw,
    )


async def pull(cfg: PullerConfig, ref: str, bundle: Path, **kw: Any) -> Any:
    async with ImagePuller(cfg) as p:
        return await p.pull(ref, bundle, **kw)


@pytest.fixture
def cleanup_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt.startswith(str(tmp_path)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def no_populated_rootfs(bundle: Path) -> bool:
    r = bundle / "rootfs"
    return not r.exists() or (not os.path.ismount(r) and not any(r.iterdir()))


# ---------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("snapshotter", ["overlay", "copy"])
async def test_pull_into_bundle_then_again_from_the_store(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, snapshotter: str, cleanup_mounts: None
) -> None:
    cfg = config_for(registry, tmp_path / "work", snapshotter=snapshotter)
    events: list[ProgressEvent] = []
    r1 = await pull(cfg, images["std"], tmp_path / "b1", progress=events.append)
    assert r1.manifest_digest.startswith("sha256:") and r1.layers == 2 and r1.layers_cached == 0
    assert r1.bytes_downloaded > len(PAYLOAD) // 2
    check_rootfs(r1.rootfs)
    assert os.path.ismount(r1.rootfs) == (snapshotter == "overlay")
    spec = json.loads((tmp_path / "b1/config.json").read_text())
    assert spec["process"]["args"] == ["/bin/app"]
    assert "CHECK=1" in spec["process"]["env"] and any(e.startswith("PATH=") for e in spec["process"]["env"])
    assert spec["process"]["cwd"] == "/work"
    assert spec["process"]["user"] == {"uid": 1234, "gid": 50}  # names resolved in the image's /etc files
    assert spec["root"]["path"] == "rootfs"
    kinds = {e.kind for e in events}
    assert {"resolved", "layer-start", "layer-done", "bundle", "done"} <= kinds

    r2 = await pull(cfg, images["std"], tmp_path / "b2")
    assert r2.manifest_digest == r1.manifest_digest
    assert r2.bytes_downloaded == 0 and r2.layers_cached == 2
    check_rootfs(r2.rootfs)

    # writes into one bundle do not leak into the store or the other bundle
    (r2.rootfs / "etc/keep.txt").write_text("changed\n")
    assert (r1.rootfs / "etc/keep.txt").read_text() == "keep\n"

    async with ImagePuller(cfg) as p:
        await p.release_bundle(tmp_path / "b1")
        await p.release_bundle(tmp_path / "b2")
        assert p.store.gc() == []  # the image record still references the layers
        assert p.store.remove_image(r1.manifest_digest)
        assert len(p.store.gc()) == 2
    assert not any((tmp_path / "work/layers").iterdir())
    assert not any((tmp_path / "work/blobs").iterdir())  # cached manifest/config went with the record


async def test_zstd_plain_gzip_layers_and_platform_selection(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    cfg = config_for(registry, tmp_path / "work", platform="linux/amd64")
    r = await pull(cfg, images["mixed"], tmp_path / "b")
    assert r.index_digest is not None and r.index_digest != r.manifest_digest
    assert (r.rootfs / "z/zstd.txt").read_text() == "zstd layer\n"
    assert (r.rootfs / "p/plain.txt").read_text() == "plain layer\n"
    assert (r.rootfs / "g/gzip.txt").read_text() == "gzip layer\n"
    arm = await pull(replace(cfg, platform="linux/arm64"), images["mixed"], tmp_path / "arm")
    assert (arm.rootfs / "arch").read_text() == "arm64\n" and arm.manifest_digest != r.manifest_digest
    with pytest.raises(NoMatchingPlatform, match="s390x"):
        await pull(replace(cfg, platform="linux/s390x"), images["mixed"], tmp_path / "none")
    assert no_populated_rootfs(tmp_path / "none")


async def test_pull_by_digest(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    cfg = config_for(registry, tmp_path / "work")
    r = await pull(cfg, images["std"], tmp_path / "a")
    by_digest = images["std"].rsplit(":", 1)[0] + "@" + r.manifest_digest
    r2 = await pull(cfg, by_digest, tmp_path / "b")
    assert r2.manifest_digest == r.manifest_digest
    with pytest.raises(NotFound):
        await pull(cfg, images["std"].rsplit(":", 1)[0] + "@sha256:" + "5" * 64, tmp_path / "c")


async def test_tls_registry_with_extra_ca_and_token_registry(
    tls_registry: RegistryServer, token_registry: RegistryServer, tmp_path: Path, cleanup_mounts: None
) -> None:
    ref = umoci_image(tmp_path, "small", [layer_tar([("hello", "file", b"hi\n", 0o644)])])
    tls_registry.push(ref, "t/small:1")
    token_registry.push(ref, "t/small:1")
    assert tls_registry.ca_pem is not None
    cfg = PullerConfig(
        work_dir=tmp_path / "w1",
        auth_json=tls_registry.authfile.read_bytes(),
        extra_root_certs=(tls_registry.ca_pem.read_bytes(),),
    )
    r = await pull(cfg, f"{tls_registry.host}/t/small:1", tmp_path / "b1")
    assert (r.rootfs / "hello").read_text() == "hi\n"
    with pytest.raises(RegistryError):  # same registry without its CA: certificate not trusted
        await pull(
            replace(cfg, extra_root_certs=(), work_dir=tmp_path / "w2"),
            f"{tls_registry.host}/t/small:1",
            tmp_path / "b2",
        )
    assert no_populated_rootfs(tmp_path / "b2")

    tcfg = PullerConfig(
        work_dir=tmp_path / "w3",
        auth_json=token_registry.authfile.read_bytes(),
        insecure_registries=frozenset({token_registry.host}),
    )
    r3 = await pull(tcfg, f"{token_registry.host}/t/small:1", tmp_path / "b3")
    assert (r3.rootfs / "hello").read_text() == "hi\n"
    assert token_registry.token is not None
    assert any("scope=repository%3At%2Fsmall%3Apull" in p for p, _ in token_registry.token.requests)


async def test_concurrent_pulls_of_one_image_download_each_layer_once(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    cfg = config_for(registry, tmp_path / "work")
    results = await asyncio.gather(*(pull(cfg, images["std"], tmp_path / f"b{i}") for i in range(3)))
    assert sum(r.bytes_downloaded for r in results) == max(r.bytes_downloaded for r in results)
    for r in results:
        check_rootfs(r.rootfs)


# ---------------------------------------------------------------------- failures leave nothing behind
async def test_wrong_password_and_missing_image(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path
) -> None:
    bad = json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"testuser:wrong").decode()}}})
    cfg = config_for(registry, tmp_path / "work", auth_json=bad.encode())
    with pytest.raises(AuthError) as ei:
        await pull(cfg, images["std"], tmp_path / "b")
    assert "wrong" not in str(ei.value)
    assert no_populated_rootfs(tmp_path / "b")
    with pytest.raises(AuthError):  # no credentials at all
        await pull(replace(cfg, auth_json=None), images["std"], tmp_path / "b")
    with pytest.raises(NotFound):
        await pull(config_for(registry, tmp_path / "work"), f"{registry.host}/t/nosuch:1", tmp_path / "b")


async def test_diff_id_mismatch_commits_nothing(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = config_for(registry, tmp_path / "work")
    with pytest.raises(DigestMismatch, match="uncompressed"):
        await pull(cfg, images["baddiff"], tmp_path / "b")
    assert not any((tmp_path / "work/layers").iterdir())
    assert not any((tmp_path / "work/staging").iterdir())
    assert no_populated_rootfs(tmp_path / "b")


async def test_decompression_bomb_is_stopped(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = config_for(registry, tmp_path / "work", max_layer_bytes=8 << 20)
    with pytest.raises(UnpackError, match="limit"):
        await pull(cfg, images["bomb"], tmp_path / "b")
    assert not any((tmp_path / "work/layers").iterdir())
    assert not any((tmp_path / "work/staging").iterdir())


async def test_connection_cut_mid_layer_is_resumed(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    proxy = FaultProxy(("127.0.0.1", registry.port), cut_blobs=2, cut_after=5 << 20)
    try:
        ref = images["big"].replace(registry.host, proxy.host)
        cfg = config_via(registry, proxy, tmp_path / "work")
        r = await pull(cfg, ref, tmp_path / "b")
        assert (r.rootfs / "big.bin").stat().st_size == 24 << 20
        assert proxy.cuts_done == 2
        ranged = [line for line in proxy.requests if "/blobs/" in line]
        assert len(ranged) >= 3
    finally:
        proxy.stop()


async def test_cancel_and_deadline_clean_up(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    proxy = FaultProxy(("127.0.0.1", registry.port), rate=4 << 20)
    try:
        ref = images["big"].replace(registry.host, proxy.host)
        cfg = config_via(registry, proxy, tmp_path / "work")
        task = asyncio.create_task(pull(cfg, ref, tmp_path / "b"))
        staging = tmp_path / "work/staging"
        for _ in range(600):  # cancel mid-layer, however slow the box is to get there
            if task.done() or (staging.is_dir() and any(staging.glob("*/fs/*"))):
                break
            await asyncio.sleep(0.05)
        assert not task.done() and any(staging.glob("*/fs/*")), "the pull never started writing"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not any((tmp_path / "work/staging").iterdir())
        assert no_populated_rootfs(tmp_path / "b")
        with pytest.raises(PullTimeout):
            await pull(replace(cfg, pull_timeout=0.5), ref, tmp_path / "b")
        assert not any((tmp_path / "work/staging").iterdir())
        # the lock was released: a direct pull of the same layer now works
        r = await pull(config_for(registry, tmp_path / "work"), images["big"], tmp_path / "b")
        assert (r.rootfs / "big.bin").stat().st_size == 24 << 20
    finally:
        proxy.stop()


def _cli_pull_via(
    proxy: FaultProxy, registry: RegistryServer, image: str, tmp_path: Path, work: Path
) -> list[str]:
    """`coco-image pull` of ``image`` through ``proxy`` (credentials keyed to the
    proxy's host), without --bundle."""
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps(registry.auth_json(key=proxy.host)))
    ref = image.replace(registry.host, proxy.host)
    return [sys.executable, "-m", "image_pull.cli", "pull", ref, "--plain-http", proxy.host,
            "--work-dir", str(work), "--auth-file", str(auth)]  # fmt: skip


def test_kill_9_mid_pull_then_a_new_pull_succeeds(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    proxy = FaultProxy(("127.0.0.1", registry.port), rate=4 << 20)
    proc: subprocess.Popen[bytes] | None = None
    try:
        work = tmp_path / "work"
        cmd = _cli_pull_via(proxy, registry, images["big"], tmp_path, work)
        proc = subprocess.Popen(
            [*cmd, "--bundle", str(tmp_path / "b1")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any((work / "staging").glob("*/fs/*")):
            time.sleep(0.05)
        assert any((work / "staging").glob("*/fs/*")), "the pull never started writing"
        workers = subprocess.run(
            ["pgrep", "-f", "-P", str(proc.pid), "image_pull.layer_worker"], capture_output=True
        ).stdout.split()
        assert workers, "the pull runs its layers in worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{w.decode()}").exists() for w in workers):
            time.sleep(0.05)
        assert not any(Path(f"/proc/{w.decode()}").exists() for w in workers), "workers outlived the puller"
        assert not any((work / "layers").iterdir())  # nothing half-committed
        assert no_populated_rootfs(tmp_path / "b1")
        proxy.rate = 0
        cp = subprocess.run([*cmd, "--bundle", str(tmp_path / "b2")], capture_output=True, timeout=120)
        assert cp.returncode == 0, cp.stderr.decode()
        assert cp.stdout.decode().strip().startswith("sha256:")
        assert (tmp_path / "b2/rootfs/big.bin").stat().st_size == 24 << 20
        assert not any((work / "staging").iterdir())  # the stale attempt was swept
    finally:
        if proc is not None and proc.poll() is None:  # an assertion failed before the kill
            proc.kill()
            proc.wait()
        proxy.stop()


async def test_full_disk(registry: RegistryServer, images: dict[str, str], tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], capture_output=True)
    if cp.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {cp.stderr.decode().strip()}")
    try:
        cfg = config_for(registry, small / "work")
        # 24 MiB compressed cannot fit in 20 MiB: refused before downloading
        with pytest.raises(InsufficientSpace, match="need about"):
            await pull(cfg, images["big"], tmp_path / "b1")
        # small compressed, 64 MiB uncompressed: ENOSPC while unpacking
        with pytest.raises(InsufficientSpace, match="no space"):
            await pull(replace(cfg, max_layer_bytes=1 << 30), images["bomb"], tmp_path / "b2")
        assert not any((small / "work/staging").iterdir())
        assert not any((small / "work/layers").iterdir())
        assert no_populated_rootfs(tmp_path / "b2")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ---------------------------------------------------------------------- CLI
def test_cli_prints_digest_and_fails_with_one_line(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    base = [
        sys.executable,
        "-m",
        "image_pull.cli",
        "pull",
        images["std"],
        "--plain-http",
        registry.host,
        "--work-dir",
        str(tmp_path / "w"),
    ]
    cp = subprocess.run(
        [*base, "--bundle", str(tmp_path / "b"), "--auth-file", str(registry.authfile), "-v"],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr.decode()
    assert cp.stdout.decode().splitlines()[0].startswith("sha256:")
    assert b"event=layer-done" in cp.stderr
    cp = subprocess.run([*base, "--bundle", str(tmp_path / "c")], capture_output=True, timeout=120)
    assert cp.returncode == 1
    lines = cp.stderr.decode().strip().splitlines()
    assert lines[0].startswith("coco-image pull: WARNING: no --policy: image signatures are NOT verified")
    assert len(lines) == 2 and lines[1].startswith("coco-image pull:") and "HTTP 401" in lines[1]


# ---------------------------------------------------------------------- proxies, registries.conf, processes
async def test_http_proxy_and_no_proxy(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    from image_pull.registries_conf import ProxyConfig

    proxy = FaultProxy(
        ("127.0.0.1", registry.port)
    )  # forwards absolute-form requests; Go's server accepts them
    try:
        cfg = config_for(registry, tmp_path / "w1", proxy=ProxyConfig(http_proxy=f"http://{proxy.host}"))
        r = await pull(cfg, images["std"], tmp_path / "b1")
        check_rootfs(r.rootfs)
        assert any(line.startswith(f"GET http://{registry.host}/v2/") for line in proxy.requests)
        seen = len(proxy.requests)
        direct = replace(
            cfg,
            work_dir=tmp_path / "w2",
            proxy=ProxyConfig(http_proxy=f"http://{proxy.host}", no_proxy=("127.0.0.1",)),
        )
        await pull(direct, images["std"], tmp_path / "b2")
        assert len(proxy.requests) == seen  # no_proxy: straight to the registry
    finally:
        proxy.stop()


async def test_registries_conf_mirror_fallback_and_block(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    from image_pull.errors import PolicyRejected
    from image_pull.registries_conf import RegistryConfig

    conf = f"""
[[registry]]
prefix = "{registry.host}/t"
location = "{registry.host}/t"
insecure = true
[[registry.mirror]]
location = "{registry.host}/no-such-mirror"
insecure = true

[[registry]]
prefix = "{registry.host}/blocked"
blocked = true
""".encode()
    rc = RegistryConfig.from_toml(conf)
    cfg = config_for(registry, tmp_path / "w", registry_config=rc, insecure_registries=frozenset())
    r = await pull(cfg, images["std"], tmp_path / "b")  # mirror 404s, the location works
    check_rootfs(r.rootfs)
    with pytest.raises(PolicyRejected, match="blocked"):
        await pull(cfg, f"{registry.host}/blocked/x:1", tmp_path / "c")


def test_two_processes_pulling_one_image_download_each_blob_once(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    proxy = FaultProxy(("127.0.0.1", registry.port), rate=8 << 20)
    try:
        cmd = _cli_pull_via(proxy, registry, images["big"], tmp_path, tmp_path / "work")
        procs = [
            subprocess.Popen(
                [*cmd, "--bundle", str(tmp_path / f"b{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
        assert outs[0][0].split()[0] == outs[1][0].split()[0]
        blob_gets = [line.split()[1].rsplit("/", 1)[1] for line in proxy.requests if "/blobs/" in line]
        counts = {d: blob_gets.count(d) for d in blob_gets}
        # the 24 MiB layer once in all; the small config once per process at most (it may be cached)
        import urllib.request

        req = urllib.request.Request(
            f"http://{registry.host}/v2/t/big/manifests/1",
            headers={
                "Authorization": "Basic " + base64.b64encode(b"testuser:testpass").decode(),
                "Accept": "application/vnd.oci.image.manifest.v1+json",
            },
        )
        man = json.loads(urllib.request.urlopen(req).read())
        layer = man["layers"][0]["digest"]
        assert counts.pop(layer) == 1, counts
        assert list(counts) == [man["config"]["digest"]] and counts[man["config"]["digest"]] <= 2
        for i in range(2):
            assert (tmp_path / f"b{i}/rootfs/big.bin").stat().st_size == 24 << 20
    finally:
        proxy.stop()


@pytest.mark.parametrize("workers", ["thread", "process"])
async def test_thread_and_process_unpack_workers_agree(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, workers: str, cleanup_mounts: None
) -> None:
    cfg = config_for(registry, tmp_path / "work", unpack_workers=workers)
    r = await pull(cfg, images["std"], tmp_path / "b")
    check_rootfs(r.rootfs)
    with pytest.raises(DigestMismatch):
        await pull(cfg, images["baddiff"], tmp_path / "c")
    with pytest.raises(UnpackError, match="limit"):
        await pull(replace(cfg, max_layer_bytes=8 << 20), images["bomb"], tmp_path / "d")
    assert not any((tmp_path / "work/staging").iterdir())


async def test_two_pulls_into_one_bundle_one_wins(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    from image_pull.errors import BundleError

    cfg = config_for(registry, tmp_path / "work")
    results = await asyncio.gather(
        *(pull(cfg, images["std"], tmp_path / "b") for _ in range(2)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    errs = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 1 and len(errs) == 1 and isinstance(errs[0], BundleError), results
    check_rootfs(tmp_path / "b/rootfs")
    assert (
        len(
            [
                line
                for line in Path("/proc/self/mounts").read_text().splitlines()
                if str(tmp_path / "b") in line
            ]
        )
        == 1
    )


def test_gc_cli_releases_bundles_and_removes_layers(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    work = tmp_path / "w"
    base = [sys.executable, "-m", "image_pull.cli"]
    cp = subprocess.run(
        [
            *base,
            "pull",
            images["std"],
            "--plain-http",
            registry.host,
            "--work-dir",
            str(work),
            "--bundle",
            str(tmp_path / "b"),
            "--auth-file",
            str(registry.authfile),
        ],
        capture_output=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr.decode()
    digest = cp.stdout.decode().split()[0]
    assert os.path.ismount(tmp_path / "b/rootfs")
    cp = subprocess.run([*base, "gc", "--work-dir", str(work)], capture_output=True, timeout=60)
    assert cp.returncode == 0 and cp.stdout == b""  # everything still referenced
    cp = subprocess.run(
        [
            *base,
            "gc",
            "--work-dir",
            str(work),
            "--release-bundle",
            str(tmp_path / "b"),
            "--remove-image",
            digest,
        ],
        capture_output=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr.decode()
    assert len(cp.stdout.decode().split()) == 2
    assert not os.path.ismount(tmp_path / "b/rootfs") and not any((work / "layers").iterdir())


async def test_token_registry_wrong_password_and_anonymous(
    token_registry: RegistryServer, tmp_path: Path, cleanup_mounts: None
) -> None:
    ref = umoci_image(tmp_path, "tok", [layer_tar([("t", "file", b"t\n", 0o644)])])
    token_registry.push(ref, "t/tok:1")
    image = f"{token_registry.host}/t/tok:1"
    bad = json.dumps(token_registry.auth_json(password="wrong")).encode()
    cfg = PullerConfig(
        work_dir=tmp_path / "w", auth_json=bad, insecure_registries=frozenset({token_registry.host})
    )
    with pytest.raises(AuthError, match="token request"):
        await pull(cfg, image, tmp_path / "b")
    assert no_populated_rootfs(tmp_path / "b")
    # anonymous callers get a pull token from this token server
    r = await pull(replace(cfg, auth_json=None), image, tmp_path / "b")
    assert (r.rootfs / "t").read_text() == "t\n"


async def test_cut_layer_without_range_support_is_downloaded_again(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    proxy = FaultProxy(("127.0.0.1", registry.port), cut_blobs=1, cut_after=5 << 20, strip_range=True)
    try:
        ref = images["big"].replace(registry.host, proxy.host)
        cfg = config_via(registry, proxy, tmp_path / "work")
        r = await pull(cfg, ref, tmp_path / "b")
        assert (r.rootfs / "big.bin").stat().st_size == 24 << 20 and proxy.cuts_done == 1
        blob_gets = [line for line in proxy.requests if "/blobs/" in line]
        assert len(blob_gets) == 4  # config, cut layer, refused resume (200), full layer again
        assert not any((tmp_path / "work/staging").iterdir())
    finally:
        proxy.stop()


async def test_docker_schema2_manifest_and_an_image_without_layers(
    registry: RegistryServer, tmp_path: Path, cleanup_mounts: None
) -> None:
    ref = umoci_image(tmp_path, "v2s2", standard_layers())
    registry.push(ref, "t/v2s2:1", extra=["--format", "v2s2"])
    cfg = config_for(registry, tmp_path / "work")
    async with ImagePuller(cfg) as p:
        fetched = await p.registry.get_manifest(parse_reference(f"{registry.host}/t/v2s2:1"))
    assert fetched.content_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert b"application/vnd.docker.image.rootfs.diff.tar.gzip" in fetched.body
    r = await pull(cfg, f"{registry.host}/t/v2s2:1", tmp_path / "b")
    check_rootfs(r.rootfs)
    assert r.manifest_digest == "sha256:" + hashlib.sha256(fetched.body).hexdigest()

    empty = OciLayout(tmp_path / "empty")
    empty.image([], tag="v1")
    registry.push(f"{empty.path}:v1", "t/empty:1")
    r2 = await pull(cfg, f"{registry.host}/t/empty:1", tmp_path / "e")
    assert r2.layers == 0 and os.listdir(r2.rootfs) == []
    assert json.loads((tmp_path / "e/config.json").read_text())["process"]["args"] == ["/bin/app"]


async def test_auto_snapshotter_falls_back_to_a_flattened_copy(
    registry: RegistryServer,
    images: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_mounts: None,
) -> None:
    from image_pull import bundle as bundle_mod
    from image_pull.errors import BundleError

    def no_overlay(*_a: object, **_k: object) -> None:
        raise BundleError("overlay mount failed: mount: unknown filesystem type 'overlay'")

    monkeypatch.setattr(bundle_mod, "mount_overlay", no_overlay)  # overlayfs missing from the kernel
    r = await pull(config_for(registry, tmp_path / "w"), images["std"], tmp_path / "b")
    assert not os.path.ismount(r.rootfs)
    check_rootfs(r.rootfs)
    assert not any((tmp_path / "w/bundles").iterdir())
    with pytest.raises(BundleError, match="overlay"):
        await pull(config_for(registry, tmp_path / "w", snapshotter="overlay"), images["std"], tmp_path / "c")
    assert no_populated_rootfs(tmp_path / "c")


class _RedirectingFront:
    """Reverse proxy in front of the registry that answers blob GETs with a 307 to a
    second origin (like a registry backed by object storage with pre-signed URLs)."""

    def __init__(self, registry: RegistryServer) -> None:
        import threading
        import urllib.error
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.blob_requests: list[dict[str, str]] = []
        creds = base64.b64encode(b"testuser:testpass").decode()
        outer = self

        class Blobs(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.blob_requests.append(dict(self.headers))
                digest = self.path.split("/")[-1].split("?")[0]
                repo = self.path.split("/blob/")[1].rsplit("/", 1)[0]
                req = urllib.request.Request(
                    f"http://{registry.host}/v2/{repo}/blobs/{digest}",
                    headers={"Authorization": f"Basic {creds}"},
                )
                data = urllib.request.urlopen(req).read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.blobs = ThreadingHTTPServer(("127.0.0.1", 0), Blobs)
        blob_port = self.blobs.server_address[1]

        class Front(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                if "/blobs/" in self.path:
                    repo, digest = self.path[len("/v2/") :].split("/blobs/")
                    self.send_response(307)
                    self.send_header("Location", f"http://localhost:{blob_port}/blob/{repo}/{digest}?sig=abc")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")}
                req = urllib.request.Request(f"http://{registry.host}{self.path}", headers=headers)
                try:
                    resp = urllib.request.urlopen(req)
                    status, body, hdrs = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as exc:
                    status, body, hdrs = exc.code, exc.read(), exc.headers
                self.send_response(status)
                for k, v in hdrs.items():
                    if k.lower() in ("content-type", "docker-content-digest", "www-authenticate"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
        self.host = f"127.0.0.1:{self.front.server_address[1]}"
        for srv in (self.blobs, self.front):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for srv in (self.blobs, self.front):
            srv.shutdown()
            srv.server_close()


async def test_blob_redirect_to_another_origin_gets_no_credentials(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    front = _RedirectingFront(registry)
    try:
        cfg = config_for(
            registry,
            tmp_path / "w",
            auth_json=json.dumps(registry.auth_json(key=front.host)).encode(),
            insecure_registries=frozenset({front.host, "localhost"}),
        )
        r = await pull(cfg, images["std"].replace(registry.host, front.host), tmp_path / "b")
        check_rootfs(r.rootfs)
        assert len(front.blob_requests) == 3  # config + 2 layers, all through the redirect
        assert all("Authorization" not in h and "authorization" not in h for h in front.blob_requests)
    finally:
        front.stop()


async def test_gc_between_layer_commit_and_mount_keeps_the_pulls_layers(
    registry: RegistryServer,
    images: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_mounts: None,
) -> None:
    from image_pull.store import LayerStore

    removed: list[list[str]] = []
    real = ImagePuller._make_bundle

    def gc_first(self: ImagePuller, *a: Any) -> Path:
        removed.append(LayerStore(tmp_path / "w").gc())  # another process' GC, right before the mount
        return real(self, *a)

    monkeypatch.setattr(ImagePuller, "_make_bundle", gc_first)
    r = await pull(config_for(registry, tmp_path / "w"), images["std"], tmp_path / "b")
    assert removed == [[]]
    check_rootfs(r.rootfs)


async def test_cached_layer_is_reused_only_under_its_lock(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    """A GC holding a layer's lock may already have decided to remove it (its reference check
    ran before this pull recorded the image): the pull must wait for the lock before it counts
    the layer as cached, then download it again if the GC removed it."""
    import fcntl
    import shutil

    from image_pull.store import LayerStore

    cfg = config_for(registry, tmp_path / "w", snapshotter="copy")
    r1 = await pull(cfg, images["std"], tmp_path / "b1")
    store = LayerStore(tmp_path / "w")
    doc = json.loads((store.images / f"{r1.manifest_digest.split(':')[1]}.json").read_text())
    first = doc["layers"][0]
    fd = os.open(store.locks / f"{first.split(':')[1]}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the "GC" holds the layer
        task = asyncio.create_task(pull(cfg, images["std"], tmp_path / "b2"))
        await asyncio.sleep(0.5)
        assert not task.done(), "the pull used a layer whose lock a GC holds"
        shutil.rmtree(store.layer_dir(first))  # the GC removes it, then lets go
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    r2 = await asyncio.wait_for(task, 120)
    check_rootfs(r2.rootfs)
    assert r2.layers_cached == r2.layers - 1 and store.has_layer(first)


async def test_layer_worker_never_imports_from_the_callers_directory(
    registry: RegistryServer,
    images: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_mounts: None,
) -> None:
    """``python -m`` puts the cwd first on sys.path: a pull started from a directory holding
    an ``image_pull`` package must not run that code (as root) in its layer workers."""
    evil = tmp_path / "cwd"
    (evil / "image_pull").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (evil / "image_pull/__init__.py").write_text("")
    (evil / "image_pull/layer_worker.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(evil)
    r = await pull(
        config_for(registry, tmp_path / "w", unpack_workers="process"), images["std"], tmp_path / "b"
    )
    check_rootfs(r.rootfs)
    assert not marker.exists()


async def test_damaged_layer_record_is_fetched_again(
    registry: RegistryServer, images: dict[str, str], tmp_path: Path, cleanup_mounts: None
) -> None:
    from image_pull.store import LayerStore

    cfg = config_for(registry, tmp_path / "w", snapshotter="copy")
    r1 = await pull(cfg, images["std"], tmp_path / "b1")
    store = LayerStore(tmp_path / "w")
    first = json.loads((store.images / f"{r1.manifest_digest.split(':')[1]}.json").read_text())["layers"][0]
    (store.layer_dir(first) / "layer.json").write_text("{not json")
    r2 = await pull(cfg, images["std"], tmp_path / "b2")
    check_rootfs(r2.rootfs)
    assert r2.layers_cached == r2.layers - 1 and store.read_record(first) is not None
    # a lower of a mounted rootfs is never evicted: the pull refuses instead
    r3 = await pull(replace(cfg, snapshotter="overlay"), images["std"], tmp_path / "b3")
    assert os.path.ismount(r3.rootfs)
    (store.layer_dir(first) / "layer.json").write_text("{not json")
    with pytest.raises(StoreError, match="in use"):
        await pull(cfg, images["std"], tmp_path / "b4")
    check_rootfs(r3.rootfs)


async def test_failed_bundle_never_deletes_files_it_did_not_make(
    registry: RegistryServer,
    images: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_mounts: None,
) -> None:
    """Someone fills <bundle>/rootfs between the pull's checks and its mount: the pull fails
    and leaves those files alone (its cleanup removed the whole rootfs tree)."""
    from image_pull import bundle as bundle_mod

    real = bundle_mod.check_empty_rootfs

    def racer(rootfs: Path) -> None:
        (rootfs / "theirs.txt").write_text("not the puller's")
        real(rootfs)

    monkeypatch.setattr(bundle_mod, "check_empty_rootfs", racer)
    bundle = tmp_path / "b"
    with pytest.raises(BundleError, match="changed under the pull"):
        await pull(config_for(registry, tmp_path / "w", snapshotter="overlay"), images["std"], bundle)
    assert (bundle / "rootfs/theirs.txt").read_text() == "not the puller's"
    assert not os.path.ismount(bundle / "rootfs") and not (bundle / "config.json").exists()


async def test_second_pull_by_tag_uses_head_and_the_manifest_cache(
    registry: RegistryServer, tmp_path: Path, cleanup_mounts: None
) -> None:
    one = umoci_image(tmp_path, "one", [layer_tar([("v", "file", b"one\n", 0o644)])])
    two = umoci_image(tmp_path, "two", [layer_tar([("v", "file", b"two\n", 0o644)])])
    registry.push(one, "t/retag:latest")
    proxy = FaultProxy(("127.0.0.1", registry.port))
    try:
        image = f"{proxy.host}/t/retag:latest"
        cfg = config_via(registry, proxy, tmp_path / "w")
        r1 = await pull(cfg, image, tmp_path / "b1")
        first = list(proxy.requests)
        assert any(line.startswith("GET /v2/t/retag/manifests/latest") for line in first)
        proxy.requests.clear()
        r2 = await pull(cfg, image, tmp_path / "b2")
        assert r2.manifest_digest == r1.manifest_digest and r2.bytes_downloaded == 0
        # only the HEAD (plus the ping): no manifest GET (Docker Hub counts those), no blob GET
        assert [line.split()[0] for line in proxy.requests if "/v2/t/" in line] == ["HEAD"], proxy.requests

        registry.push(two, "t/retag:latest")  # the tag moves: HEAD sees a new digest
        r3 = await pull(cfg, image, tmp_path / "b3")
        assert r3.manifest_digest != r1.manifest_digest and (r3.rootfs / "v").read_text() == "two\n"

        # a corrupted cache entry is never used: the manifest is fetched again and verified
        cached = tmp_path / "w/blobs" / r1.manifest_digest.replace(":", "-")
        cached.write_bytes(cached.read_bytes().replace(b"schemaVersion", b"schemaVersiom"))
        proxy.requests.clear()
        r4 = await pull(cfg, f"{proxy.host}/t/retag@{r1.manifest_digest}", tmp_path / "b4")
        assert (r4.rootfs / "v").read_text() == "one\n"
        assert any(
            line.startswith(f"GET /v2/t/retag/manifests/{r1.manifest_digest}") for line in proxy.requests
        )
    finally:
        proxy.stop()


async def test_failed_config_write_leaves_no_temp_file(
    registry: RegistryServer,
    images: dict[str, str],
    tmp_path: Path,
    cleanup_mounts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = os.replace

    def failing(src: Any, dst: Any) -> None:
        if str(dst).endswith("config.json"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    bundle = tmp_path / "b"
    with pytest.raises(BundleError, match="cannot write"):
        await pull(config_for(registry, tmp_path / "work", snapshotter="copy"), images["std"], bundle)
    assert os.listdir(bundle) == []
