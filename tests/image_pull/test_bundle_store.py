"""Bundle (overlay with long lowerdir lists, flattened copy, config.json) and layer store."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from image_pull import bundle
from image_pull.errors import BundleError, InsufficientSpace
from image_pull.manifest import parse_config
from image_pull.store import LayerRecord, LayerStore, chain_ids

ROOT = os.geteuid() == 0
D = ["sha256:" + c * 64 for c in "123"]


def _config(**cfg: object) -> bytes:
    return json.dumps(
        {"os": "linux", "architecture": "amd64", "config": cfg, "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()


def test_runtime_config_from_image_config(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nops:x:77:\n")
    cfg = parse_config(
        _config(
            Entrypoint=["/entry"],
            Cmd=["a", "b"],
            Env=["PATH=/x", "K=V"],
            WorkingDir="/srv",
            User="web:ops",
            Volumes={"/data": {}},
            Labels={"l": "v"},
        )
    )
    spec = json.loads(bundle.build_runtime_config(cfg, rootfs=tmp_path, image_ref="r", manifest_digest=D[0]))
    p = spec["process"]
    assert p["args"] == ["/entry", "a", "b"] and p["env"] == ["PATH=/x", "K=V"] and p["cwd"] == "/srv"
    assert p["user"] == {"uid": 33, "gid": 77}
    assert {
        "destination": "/data",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "noexec", "nodev", "relatime", "rw"],
    } in spec["mounts"]
    assert spec["annotations"]["l"] == "v" and spec["annotations"]["org.opencontainers.image.os"] == "linux"
    assert spec["root"] == {"path": "rootfs", "readonly": False}


@pytest.mark.parametrize(
    ("user", "want"),
    [("", (0, 0)), ("1000", (1000, 0)), ("33", (33, 44)), ("1000:2000", (1000, 2000)), ("web", (33, 44))],
)
def test_user_resolution(tmp_path: Path, user: str, want: tuple[int, int]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("web:x:33:44::/:/bin/sh\n")
    u = bundle.resolve_user(user, tmp_path)
    assert (u["uid"], u["gid"]) == want


def test_supplementary_groups_become_additional_gids(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("web:x:33:44::/:/bin/sh\n")
    (tmp_path / "etc/group").write_text("web:x:44:\naudio:x:63:web,bob\nvideo:x:64:bob\nwww:x:65:web\n")
    assert bundle.resolve_user("web", tmp_path) == {"uid": 33, "gid": 44, "additionalGids": [63, 65]}
    assert bundle.resolve_user("web:audio", tmp_path) == {"uid": 33, "gid": 63}
    with pytest.raises(BundleError, match="group"):
        bundle.resolve_user("web:nosuch", tmp_path)
    with pytest.raises(BundleError, match="user"):
        bundle.resolve_user("nobody", tmp_path)


def test_user_lookup_never_follows_symlinks_out_of_the_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "host-passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(outside)
    with pytest.raises(BundleError, match="not found"):
        bundle.resolve_user("evil", root)
    (root / "etc/passwd").unlink()
    (root / "etc").rmdir()
    (root / "etc").symlink_to(tmp_path)  # a symlinked /etc
    with pytest.raises(BundleError):
        bundle.resolve_user("evil", root)


def test_non_linux_image_is_refused() -> None:
    cfg = parse_config(json.dumps({"os": "windows", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    with pytest.raises(BundleError, match="linux"):
        bundle.build_runtime_config(cfg, rootfs=None, image_ref="r", manifest_digest=D[0])


def _layer(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    return d


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root: mknod whiteouts, trusted.* xattrs, mounts")
@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_overlay_form_layers_compose_the_same_in_both_modes(tmp_path: Path, mode: str) -> None:
    low = _layer(tmp_path, "l0")
    (low / "dir").mkdir()
    (low / "dir/a").write_text("a")
    (low / "dir/b").write_text("b")
    (low / "opq").mkdir()
    (low / "opq/old").write_text("old")
    (low / "f").write_text("lower f")
    up = _layer(tmp_path, "l1")
    (up / "dir").mkdir()
    os.mknod(up / "dir/a", stat.S_IFCHR, os.makedev(0, 0))  # whiteout
    (up / "opq").mkdir()
    os.setxattr(up / "opq", "trusted.overlay.opaque", b"y")
    (up / "opq/new").write_text("new")
    (up / "f").write_text("upper f")
    os.link(up / "f", up / "f2")
    target = tmp_path / "bundle/rootfs"
    target.parent.mkdir()
    if mode == "overlay":
        target.mkdir()
        bundle.mount_overlay([up, low], tmp_path / "u", tmp_path / "w", target, tmp_path / "links")
    else:
        bundle.copy_rootfs([low, up], target)
    try:
        assert sorted(os.listdir(target / "dir")) == ["b"]
        assert sorted(os.listdir(target / "opq")) == ["new"]
        assert (target / "f").read_text() == "upper f"
        assert (target / "f2").stat().st_ino == (target / "f").stat().st_ino
    finally:
        if mode == "overlay":
            bundle.unmount(target)


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root: mounts")
def test_overlay_with_hundreds_of_layers_fits_the_mount_options(tmp_path: Path) -> None:
    layers = []
    for i in range(300):
        d = _layer(tmp_path / "a-rather-long-directory-name-for-the-layer-store" / "layers", f"{i:064x}")
        (d / f"file{i}").write_text(str(i))
        layers.append(d)
    target = tmp_path / "rootfs"
    target.mkdir()
    bundle.mount_overlay(list(reversed(layers)), tmp_path / "u", tmp_path / "w", target, tmp_path / "l")
    try:
        assert len(os.listdir(target)) == 300
        assert (target / "file299").read_text() == "299"
    finally:
        bundle.unmount(target)
    assert not os.path.ismount(target)


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root: mounts")
def test_overlay_options_are_not_spliced_from_the_work_dir_path(tmp_path: Path) -> None:
    """A work dir path with ',' or ':' (given by an RPC caller) must not add mount options."""
    low = _layer(tmp_path, "low")
    (low / "f").write_text("image")
    odd = tmp_path / "w,lowerdir=x:y"
    target = tmp_path / "rootfs"
    target.mkdir()
    bundle.mount_overlay([low], odd / "u", odd / "w", target, odd / "l")
    try:
        assert sorted(os.listdir(target)) == ["f"]
        (target / "new").write_text("written")
        assert (odd / "u/new").read_text() == "written"  # the upper dir really is ours
    finally:
        bundle.unmount(target)
    with pytest.raises(BundleError, match="must not contain"):
        bundle.mount_overlay([low], tmp_path / "a,b", tmp_path / "w2", target, tmp_path / "l2")
    assert not os.path.ismount(target)


# ---------------------------------------------------------------------- store
def _commit(store: LayerStore, chain: str, content: str) -> None:
    st = store.new_staging(chain)
    (st / "fs/x").write_text(content)
    store.commit(st, LayerRecord(chain, chain, chain, "t", 1, 1))


def test_store_commit_is_atomic_and_gc_respects_roots_and_locks(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    ids = chain_ids(D)
    for c in ids:
        _commit(store, c, c)
    assert all(store.has_layer(c) for c in ids)
    # a second commit of the same key keeps the first (no partial replacement)
    st = store.new_staging(ids[0])
    store.commit(st, LayerRecord(ids[0], D[0], D[0], "t", 1, 1))
    assert (store.layer_fs(ids[0]) / "x").read_text() == ids[0]
    assert not any(store.staging.iterdir())

    store.record_image(D[0], "img", D[1], ids[:2])
    # an uncommitted staging dir of a crashed writer is swept by GC when its lock is free
    stale = store.staging / f"{ids[2].split(':')[1]}.dead"
    (stale / "fs").mkdir(parents=True)

    async def gc_while_locked() -> list[str]:
        async with store.lock(ids[2]):
            return store.gc()

    removed = asyncio.run(gc_while_locked())
    assert removed == [] and store.has_layer(ids[2]) and stale.exists()  # locked: untouched
    removed = store.gc()
    assert removed == [ids[2].split(":")[1]] and not stale.exists()
    assert store.has_layer(ids[0]) and store.has_layer(ids[1])
    store.remove_image(D[0])
    assert sorted(store.gc()) == sorted(c.split(":")[1] for c in ids[:2])


def test_store_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    """Another process holds the lock until told to let go: no timing assumption either way."""
    store = LayerStore(tmp_path)
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(store.locks / (D[0].split(':')[1] + '.lock'))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.readline()\n"
    )
    proc = subprocess.Popen(["python3", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin
    try:
        assert proc.stdout.readline().strip() == b"locked"

        async def take() -> None:
            async with store.lock(D[0]):
                return

        async def scenario() -> None:
            task = asyncio.create_task(take())
            await asyncio.sleep(0.3)
            assert not task.done(), "took a lock another process holds"
            stdin.write(b"go\n")
            stdin.flush()
            await asyncio.wait_for(task, 60)

        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()


def test_space_check(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    store.check_space(1)
    with pytest.raises(InsufficientSpace, match="need about"):
        store.check_space(1 << 60)


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root: mknod whiteouts, trusted.* xattrs")
def test_hardlinks_into_lower_layers_are_copied_up_like_overlayfs(tmp_path: Path) -> None:
    from image_pull.errors import UnpackError
    from image_pull.unpack.overlay import copy_up_links

    l0 = _layer(tmp_path, "l0")
    (l0 / "bin").mkdir(mode=0o711)
    (l0 / "bin/app").write_bytes(b"app")
    os.chmod(l0 / "bin/app", 0o4755)
    (l0 / "gone").write_text("g")
    (l0 / "opq").mkdir()
    (l0 / "opq/hidden").write_text("h")
    (l0 / "sym").symlink_to("/etc")
    l1 = _layer(tmp_path, "l1")
    os.mknod(l1 / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (l1 / "opq").mkdir()
    os.setxattr(l1 / "opq", "trusted.overlay.opaque", b"y")
    top = _layer(tmp_path, "l2")
    (top / "etc").mkdir()
    copy_up_links(top, (("etc/hard", "bin/app"),), [l1, l0])
    assert (top / "bin/app").read_bytes() == b"app" and (top / "bin/app").stat().st_mode & stat.S_ISUID
    assert stat.S_IMODE((top / "bin").stat().st_mode) == 0o711  # parent metadata copied too
    assert (top / "etc/hard").stat().st_ino == (top / "bin/app").stat().st_ino
    assert not (l0 / "bin/app").stat().st_nlink > 1  # the lower layer is untouched
    for target in ("gone", "opq/hidden", "nosuch"):
        with pytest.raises(UnpackError, match="does not exist"):
            copy_up_links(top, (("etc/x", target),), [l1, l0])
    with pytest.raises(UnpackError, match="symlink"):
        copy_up_links(top, (("etc/y", "sym/passwd"),), [l1, l0])


@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root: mounts")
def test_gc_drops_records_of_bundles_unmounted_by_someone_else(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "work")
    c = chain_ids(D[:1])[0]
    _commit(store, c, "x")
    rec = store.bundles / "somebundle.abcd"
    rec.mkdir()
    bundle_dir = tmp_path / "b"
    (bundle_dir / "rootfs").mkdir(parents=True)
    (rec / "bundle.json").write_text(json.dumps({"bundle": str(bundle_dir), "layers": [c]}))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(bundle_dir / "rootfs")], check=True)
    try:
        assert store.gc() == [] and rec.exists()  # mounted: a live GC root
    finally:
        subprocess.run(["umount", str(bundle_dir / "rootfs")], check=True)
    assert store.gc() == [c.split(":")[1]] and not rec.exists()


@pytest.mark.parametrize("name", ["rootfs", "config.json"])
def test_a_symlink_in_the_bundle_is_never_followed(tmp_path: Path, name: str) -> None:
    """<bundle>/rootfs or config.json as a symlink (to an empty dir, or dangling) would send
    the overlay mount / the copy / the config write outside the bundle: refused up front."""
    from image_pull.puller import ImagePuller, PullerConfig
    from image_pull.registry import RetryPolicy

    outside = tmp_path / "outside"
    outside.mkdir()
    b = tmp_path / "bundle"
    b.mkdir()
    os.symlink(outside if name == "rootfs" else outside / "config.json", b / name)

    async def go() -> None:
        cfg = PullerConfig(work_dir=tmp_path / "work", retry=RetryPolicy(attempts=1))
        async with ImagePuller(cfg) as p:
            await p.pull("127.0.0.1:9/none/img:1", b)

    with pytest.raises(BundleError, match="is a symlink"):
        asyncio.run(go())
    assert os.listdir(outside) == [] and os.path.islink(b / name)


def test_failed_image_record_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LayerStore(tmp_path / "w")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(InsufficientSpace, match="record the image"):
        store.record_image(D[0], "r/x:1", D[1], [D[2]])
    assert os.listdir(store.images) == []
