"""Conformance: our trees equal umoci's for the checked-in corpus (corpus.py).

The same layers are added to an OCI layout with ``umoci raw add-layer`` and
unpacked with ``umoci raw unpack``; we unpack them (a) flattened into one
directory and (b) in overlay form, one directory per layer, mounted as a
read-only overlayfs. The trees are compared on names, types, modes, owners,
mtimes, xattrs, link targets, device numbers, contents and hardlink groups.

Documented differences (asserted exactly, so any new one fails the test):

* ``SCHILY.xattr.<name>`` with an empty value: we create the xattr with an
  empty value (as GNU tar does); Go's archive/tar (umoci) skips every empty pax
  value, so umoci drops it.
* GNU old-style sparse entries (type ``S``, ``tar --format=gnu --sparse``):
  umoci 0.4.7 refuses them ("unknown typeflag"); we unpack them.
* Directory mtimes where umoci leaves the time of the unpack: after it
  implicitly re-creates a whited-out directory below a directory (the root
  here) and after it empties a directory of this layer for a later whiteout
  of the same name (``wd2``); we keep the times the layers give (umoci restores
  parent times everywhere else, so we read this as a umoci slip).
* Overlay form only: a directory that an upper layer only implies (it holds
  a whiteout or a new file but has no entry of its own) is created with mode
  0755, owner 0:0 and the current time in that layer's directory, and
  overlayfs shows the upper copy's attributes. Layers produced by docker,
  buildah or umoci always carry the parent directory entries, so this only
  shows with hand-made layers like this corpus's.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image_pull.unpack import UnpackOptions, unpack_layer

from .corpus import MT, conformance_layers
from .tarbuild import diff_fields, diff_trees, snapshot

UMOCI = shutil.which("umoci")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(UMOCI is None, reason="umoci not installed (apt-get install umoci)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: umoci and our unpack must both restore owners"),
]

EMPTY_XATTR = b"long/" + b"n" * 120 + b"/" + b"f" * 200
KNOWN_FLATTEN_DIFFERENCES = {
    (EMPTY_XATTR, "xattrs"),  # empty SCHILY.xattr value: umoci (Go) drops it
    (b".", "mtime_ns"),  # umoci leaves the unpack time after implicitly re-creating wd1 in it
    (b"wd2", "mtime_ns"),  # umoci leaves the unpack time after emptying it for .wh.wd2
    (b"wd1", "mtime_ns"),  # implied by wd1/x after .wh.wd1: both unpackers give it the unpack time
}


def umoci_rootfs(tmp: Path, layers: list[tuple[str, bytes]]) -> Path:
    layout = tmp / "oci"
    subprocess.run([UMOCI, "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run([UMOCI, "new", "--image", f"{layout}:t"], check=True, capture_output=True)
    for i, (_name, data) in enumerate(layers):
        p = tmp / f"layer{i}.tar"
        p.write_bytes(data)
        subprocess.run(
            [UMOCI, "raw", "add-layer", "--image", f"{layout}:t", str(p)], check=True, capture_output=True
        )
    rootfs = tmp / "umoci-rootfs"
    cp = subprocess.run(
        [UMOCI, "raw", "unpack", "--image", f"{layout}:t", str(rootfs)], capture_output=True, text=True
    )
    assert cp.returncode == 0, cp.stderr
    return rootfs


def test_flattened_tree_matches_umoci(tmp_path: Path) -> None:
    layers = conformance_layers()
    theirs = umoci_rootfs(tmp_path, layers)
    ours = tmp_path / "ours"
    ours.mkdir()
    for _name, data in layers:
        unpack_layer(io.BytesIO(data), ours, options=UnpackOptions(flatten=True))
    (a, links_a), (b, links_b) = snapshot(ours), snapshot(theirs)
    assert len(a) > 50
    assert diff_fields(a, b) == KNOWN_FLATTEN_DIFFERENCES, diff_trees(a, b)
    assert a[EMPTY_XATTR].xattrs == (("user.empty", b""),) and b[EMPTY_XATTR].xattrs == ()
    assert a[b"."].mtime_ns == a[b"wd2"].mtime_ns == MT * 10**9  # the times the layers give
    assert links_a == links_b and len(links_a) == 4


def _implied_dirs(layer_dir: Path, data: bytes) -> set[bytes]:
    """Directories present in a layer's overlay-form dir without an entry of their own."""
    from image_pull.unpack import TarReader, clean_path

    explicit = {clean_path(e.name) for e in TarReader(io.BytesIO(data))}
    out: set[bytes] = set()
    base = os.fsencode(layer_dir)
    for dirpath, _dirs, _files in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        if (rel if rel != b"." else b"") not in explicit:
            out.add(rel)
    return out


def test_overlay_form_mounted_matches_umoci(tmp_path: Path) -> None:
    layers = conformance_layers(cross_layer_hardlinks=False)
    theirs = umoci_rootfs(tmp_path, layers)
    dirs = []
    implied: set[bytes] = set()
    for i, (_name, data) in enumerate(layers):
        d = tmp_path / f"layer-{i}"
        d.mkdir()
        unpack_layer(io.BytesIO(data), d, options=UnpackOptions(flatten=False))
        if i:
            implied |= _implied_dirs(d, data)
        dirs.append(str(d))
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(reversed(dirs))
    mnt = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(merged)],
        capture_output=True,
        text=True,
    )
    if mnt.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {mnt.stderr.strip()}")
    try:
        (a, links_a), (b, links_b) = snapshot(merged), snapshot(theirs)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    unexplained = {(p, f) for p, f in diff_fields(a, b) if p not in implied} - KNOWN_FLATTEN_DIFFERENCES
    assert unexplained == set(), diff_trees(a, b)
    assert implied == {
        b".",
        b"etc",
        b"nothing-here",
        b"opt",
        b"usr",
        b"usr/bin",
        b"var",
        b"var/cache",
        b"wd1",
    }
    assert links_a == links_b
    assert links_a == links_b


def test_gnu_old_sparse_refused_by_umoci_unpacked_by_us(tmp_path: Path) -> None:
    from .corpus import _gnu_tar_sparse_layer

    data = _gnu_tar_sparse_layer("gnu")
    layout = tmp_path / "oci"
    subprocess.run([UMOCI, "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run([UMOCI, "new", "--image", f"{layout}:t"], check=True, capture_output=True)
    (tmp_path / "l.tar").write_bytes(data)
    subprocess.run([UMOCI, "raw", "add-layer", "--image", f"{layout}:t", str(tmp_path / "l.tar")], check=True)
    cp = subprocess.run(
        [UMOCI, "raw", "unpack", "--image", f"{layout}:t", str(tmp_path / "u")],
        capture_output=True,
        text=True,
    )
    assert cp.returncode != 0 and "typeflag" in cp.stderr
    ours = tmp_path / "ours"
    ours.mkdir()
    unpack_layer(io.BytesIO(data), ours)
    content = (ours / "sparse/holes-gnu").read_bytes()
    assert len(content) == 8 << 20
    assert content[1 << 20 : (1 << 20) + 6] == b"middle" and content.endswith(b"end!!")
    assert content.count(0) == len(content) - 11


def test_umoci_insert_layers_without_tar_trailer(tmp_path: Path) -> None:
    """Debian's umoci 0.4.7 ``insert`` ends layers right after the last file's data (no padding,
    no end-of-archive blocks); umoci accepts them, and so do we unless require_end_marker is set."""
    import gzip
    import json

    from image_pull.unpack import MalformedTar, open_decompressed

    layout = tmp_path / "oci"
    subprocess.run([UMOCI, "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run([UMOCI, "new", "--image", f"{layout}:t"], check=True, capture_output=True)
    (tmp_path / "f").write_bytes(b"abc")
    subprocess.run(
        [UMOCI, "insert", "--image", f"{layout}:t", str(tmp_path / "f"), "/f"],
        check=True,
        capture_output=True,
    )
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    raw = gzip.decompress(blob.read_bytes())
    assert len(raw) % 512 != 0 or raw[-1024:] != bytes(1024)  # really trailer-less
    ours = tmp_path / "ours"
    ours.mkdir()
    with open(blob, "rb") as f:
        unpack_layer(open_decompressed(f), ours)
    assert (ours / "f").read_bytes() == b"abc"
    strict = tmp_path / "strict"
    strict.mkdir()
    with open(blob, "rb") as f, pytest.raises(MalformedTar, match="end-of-archive"):
        unpack_layer(open_decompressed(f), strict, options=UnpackOptions(require_end_marker=True))
