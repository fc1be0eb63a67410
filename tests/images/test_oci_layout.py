"""``make images``' layer and layout writer (scripts/images_oci.py) and the
Debian unpacker's path rules (scripts/images_debs.py): the same tree gives the
same bytes whatever its mtimes, owners and creation order; the layouts it
writes are read by skopeo and unpacked by umoci (real peers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from scripts import images_debs, images_oci

EPOCH = 1_700_000_000


def _tree(root: Path, *, order: int, mtime: int, uid: int = 0) -> Path:
    files = [("etc/app.conf", b"a = 1\n", 0o644), ("usr/bin/app", b"#!/bin/sh\necho hi\n", 0o755),
             ("usr/share/doc/app/copyright", b"Apache-2.0\n", 0o644)]  # fmt: skip
    for rel, data, mode in files[::order]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    os.symlink("app", root / "usr/bin/app-link")
    os.link(root / "usr/bin/app", root / "usr/bin/app-hard")
    (root / "var/lib/app").mkdir(parents=True)
    for cur, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(cur, n)
            os.utime(p, (mtime, mtime), follow_symlinks=False)
            if os.geteuid() == 0:
                os.lchown(p, uid, uid)
    return root


def _layer(tmp: Path, name: str, **tree_kw: int) -> tuple[images_oci.Layer, Path]:
    root = _tree(tmp / name, **tree_kw)
    blob = tmp / f"{name}.tar.gz"
    layer = images_oci.write_layer(root, blob, epoch=EPOCH, created_by="test",
                                   owners={"var/lib/app": (65532, 65532)})  # fmt: skip
    return layer, blob


def test_same_tree_same_digest_whatever_the_mtimes_owners_and_order(tmp_path: Path) -> None:
    a, _ = _layer(tmp_path, "a", order=1, mtime=1)
    b, _ = _layer(tmp_path, "b", order=-1, mtime=2_000_000_000, uid=1000)
    assert a == b
    assert a.digest.startswith("sha256:") and a.diff_id != a.digest


def test_content_changes_the_digest(tmp_path: Path) -> None:
    a, _ = _layer(tmp_path, "a", order=1, mtime=1)
    root = tmp_path / "c"
    _tree(root, order=1, mtime=1)
    (root / "etc/app.conf").write_bytes(b"a = 2\n")
    c = images_oci.write_layer(root, tmp_path / "c.tar.gz", epoch=EPOCH, created_by="test",
                               owners={"var/lib/app": (65532, 65532)})  # fmt: skip
    assert c.digest != a.digest and c.diff_id != a.diff_id


def test_layer_bytes_are_normalised(tmp_path: Path) -> None:
    layer, blob = _layer(tmp_path, "a", order=-1, mtime=12345)
    raw = blob.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[3] & 0x08 == 0, "gzip header carries a file name"
    assert raw[4:8] == b"\0\0\0\0", "gzip header carries an mtime"
    data = gzip.decompress(raw)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.diff_id
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=str.encode)
    assert layer.entries == len(members)
    assert {m.mtime for m in members} == {EPOCH}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    owners = {m.name: (m.uid, m.gid) for m in members}
    assert owners.pop("var/lib/app") == (65532, 65532)
    assert set(owners.values()) == {(0, 0)}
    by = {m.name: m for m in members}
    assert by["usr/bin/app"].isreg() and by["usr/bin/app"].mode == 0o755
    assert by["usr/bin/app-hard"].islnk() and by["usr/bin/app-hard"].linkname == "usr/bin/app"
    assert by["usr/bin/app-link"].issym() and by["usr/bin/app-link"].linkname == "app"
    assert all(not m.pax_headers or set(m.pax_headers) <= {"path", "linkpath"} for m in members)


def test_owner_for_a_missing_path_and_special_files_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "a", order=1, mtime=1)
    with pytest.raises(images_oci.LayoutError, match="not in the tree"):
        images_oci.write_layer(
            root, tmp_path / "x.tar.gz", epoch=EPOCH, created_by="t", owners={"nope": (1, 1)}
        )
    os.mkfifo(root / "etc/fifo")
    with pytest.raises(images_oci.LayoutError, match="unsupported file type"):
        images_oci.write_layer(root, tmp_path / "y.tar.gz", epoch=EPOCH, created_by="t")


def _layout(tmp: Path, name: str, **tree_kw: int) -> tuple[Path, str]:
    layer, blob = _layer(tmp, name, **tree_kw)
    spec = images_oci.ImageSpec(entrypoint=["/usr/bin/app"], env=["PATH=/usr/bin"], user="65532:65532",
                                labels={"org.opencontainers.image.title": "t"}, exposed_ports=["8080/tcp"])  # fmt: skip
    layout = tmp / f"layout-{name}"
    return layout, images_oci.write_layout(layout, "app", [(layer, blob)], spec, epoch=EPOCH)


def test_layouts_are_byte_identical_and_canonical(tmp_path: Path) -> None:
    la, da = _layout(tmp_path, "a", order=1, mtime=1)
    lb, db = _layout(tmp_path, "b", order=-1, mtime=99)
    assert da == db
    files_a = sorted(str(p.relative_to(la)) for p in la.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(lb)) for p in lb.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (la / rel).read_bytes() == (lb / rel).read_bytes(), rel
    man = json.loads((la / "blobs/sha256" / da.split(":")[1]).read_bytes())
    cfg_raw = (la / "blobs/sha256" / man["config"]["digest"].split(":")[1]).read_bytes()
    assert cfg_raw == images_oci.canonical_json(json.loads(cfg_raw))
    cfg = json.loads(cfg_raw)
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert cfg["config"]["User"] == "65532:65532"
    assert cfg["rootfs"]["diff_ids"] == [_layer(tmp_path, "c", order=1, mtime=5)[0].diff_id]


@pytest.mark.skipif(shutil.which("skopeo") is None or shutil.which("umoci") is None,
                    reason="skopeo/umoci not installed (scripts/install-deps.sh)")  # fmt: skip
def test_skopeo_reads_and_umoci_unpacks_the_layout(tmp_path: Path) -> None:
    layout, digest = _layout(tmp_path, "a", order=1, mtime=1)
    cp = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:app"], capture_output=True, text=True, timeout=60
    )
    assert cp.returncode == 0, cp.stderr
    info = json.loads(cp.stdout)
    assert info["Digest"] == digest
    assert info["Created"].startswith("2023-11-14T22:13:20")
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:app"], capture_output=True, timeout=60)
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest
    if os.geteuid() != 0:
        pytest.skip("umoci unpack keeps owners only as root")
    out = tmp_path / "unpacked"
    cp = subprocess.run(["umoci", "unpack", "--image", f"{layout}:app", str(out)],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    rootfs = out / "rootfs"
    assert (rootfs / "usr/bin/app").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(rootfs / "usr/bin/app").st_ino == os.stat(rootfs / "usr/bin/app-hard").st_ino
    st = os.stat(rootfs / "var/lib/app")
    assert (st.st_uid, st.st_gid) == (65532, 65532)
    assert json.loads((out / "config.json").read_text())["process"]["user"]["uid"] == 65532


def test_debian_paths_merge_into_usr_and_stay_inside_the_root() -> None:
    canonical = images_debs._canonical
    assert canonical("./lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert canonical("./bin/sh") == "usr/bin/sh"
    assert canonical("./lib64/ld-linux-x86-64.so.2") == "usr/lib64/ld-linux-x86-64.so.2"
    assert canonical("./usr/lib/python3.11/os.py") == "usr/lib/python3.11/os.py"
    assert canonical("./libexec/x") == "libexec/x"
    assert canonical("./") is None
    with pytest.raises(images_debs.DebError, match="escapes"):
        canonical("./usr/../../etc/passwd")
    dropped = images_debs._dropped
    assert dropped("usr/share/doc/libc6/changelog.Debian.gz")
    assert not dropped("usr/share/doc/libc6/copyright")
    assert not dropped("usr/share/doc/libc6")
    assert dropped("usr/share/man/man1/python3.11.1.gz")
    assert dropped("usr/lib/python3.11/lib-dynload/nis.cpython-311-x86_64-linux-gnu.so")
