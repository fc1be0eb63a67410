"""Debian packages for ``make images``: download with apt, unpack without dpkg.

The image's base layer is Debian 12's own ``python3.11`` and the shared
libraries it and the dependency wheels load, taken from the ``.deb`` files
(``apt-get download``, which checks each file against the signed archive
index) and unpacked with ``dpkg-deb --fsys-tarfile``. No maintainer script
runs: nothing in this set needs one (no users, alternatives or triggers).

Paths are merged into ``/usr`` the way Debian 12 installs them (``/bin``,
``/sbin``, ``/lib``, ``/lib64`` are symlinks into ``/usr``). Each package's
control paragraph is kept under ``/var/lib/dpkg/status.d/<package>`` (as
distroless images do) so scanners can tell which versions the image holds.
Documentation is dropped except each package's ``copyright`` file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PYTHON_RUNTIME", "DebError", "download", "unpack"]

# Debian 12's python3.11 (the Depends closure of python3.11-minimal and
# libpython3.11-stdlib, less nis/readline-only extras noted below) and the C++
# runtime that grpcio and regopy's wheels link against (regopy: libatomic too).
PYTHON_RUNTIME = (
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "libatomic1",
    "zlib1g",
    "libexpat1",
    "libssl3",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libcrypt1",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libdb5.3",
    "media-types",
    "netbase",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
)
# The stdlib's nis module needs libnsl2 + libtirpc3 (and Kerberos behind them):
# it is removed rather than pulling those in.
DROP_FILES = ("usr/lib/python3.11/lib-dynload/nis.cpython-311-x86_64-linux-gnu.so",)
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DROP_PREFIXES = (
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/lintian/",
    "usr/share/locale/",
    "usr/share/bug/",
    "usr/share/doc-base/",
    "usr/share/gdb/",
    "usr/share/bash-completion/",
    "usr/share/binfmts/",
    "usr/share/pixmaps/",
    "usr/share/applications/",
)


class DebError(Exception):
    """A package could not be downloaded or unpacked."""


def _run(args: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    cp = subprocess.run(list(args), capture_output=True, timeout=600, **kw)  # type: ignore[call-overload]
    if cp.returncode != 0:
        err = cp.stderr.decode(errors="replace").strip()[-400:]
        raise DebError(f"{' '.join(args[:2])} failed: {err}")
    return cp  # type: ignore[no-any-return]


def candidates(packages: Sequence[str]) -> dict[str, str]:
    """package -> the version apt would install now (amd64)."""
    out: dict[str, str] = {}
    text = _run(["apt-cache", "show", "--no-all-versions", *packages]).stdout.decode()
    for para in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields and "Version" in fields:
            out.setdefault(fields["Package"], fields["Version"])
    missing = sorted(set(packages) - set(out))
    if missing:
        raise DebError(f"apt knows no candidate for {', '.join(missing)} (apt-get update?)")
    return out


def download(packages: Sequence[str], cache: Path) -> list[Path]:
    """The .deb files of ``packages`` at apt's candidate versions, cached under
    ``cache`` keyed by the exact package=version list; in ``packages`` order."""
    versions = candidates(packages)
    pins = [f"{p}={versions[p]}" for p in packages]
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
    dest = cache / f"debs-{key}"
    if not (dest / "done").exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".debs-") as tmp:
            _run(["apt-get", "download", "-q", *pins], cwd=tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            os.mkdir(tmp)  # TemporaryDirectory removes it again
        (dest / "pins").write_text("\n".join(pins) + "\n")
        (dest / "done").write_text(key)
    debs = {d.name.split("_", 1)[0]: d for d in dest.glob("*.deb")}
    missing = [p for p in packages if p not in debs]
    if missing:
        raise DebError(f"apt-get download left no .deb for {', '.join(missing)}")
    return [debs[p] for p in packages]


def _canonical(name: str) -> str | None:
    """Member name -> path relative to the root, merged into /usr; None for the root itself."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return None
    if ".." in parts:
        raise DebError(f"package member escapes the root: {name[:200]!r}")
    if parts[0] in _MERGED:
        parts.insert(0, "usr")
    return "/".join(parts)


def _dropped(rel: str) -> bool:
    if rel in DROP_FILES or rel.startswith(_DROP_PREFIXES):
        return True
    if rel.startswith("usr/share/doc/"):
        sub = rel.split("/")[3:]
        return not (len(sub) == 0 or (len(sub) == 1) or sub[1:] == ["copyright"])
    return False


def _unpack_one(deb: Path, root: Path) -> None:
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                rel = _canonical(m.name)
                if rel is None or _dropped(rel):
                    continue
                dst = root / rel
                if m.isdir():
                    dst.mkdir(parents=True, exist_ok=True)
                    dst.chmod(m.mode & 0o7777)
                    continue
                if os.path.lexists(dst):  # two packages ship one path: the later one wins
                    dst.unlink()
                dst.parent.mkdir(parents=True, exist_ok=True)
                if m.issym():
                    os.symlink(m.linkname, dst)
                elif m.islnk():
                    target = _canonical(m.linkname)
                    if target is None:
                        raise DebError(f"{deb.name}: hard link to the root")
                    os.link(root / target, dst)
                elif m.isreg():
                    src = tar.extractfile(m)
                    assert src is not None
                    with dst.open("wb") as f:
                        shutil.copyfileobj(src, f)
                    dst.chmod(m.mode & 0o7777)
                else:
                    raise DebError(f"{deb.name}: unsupported member type for {m.name[:200]!r}")
    finally:
        proc.stdout.close()
        if proc.wait(60) != 0:
            raise DebError(f"dpkg-deb --fsys-tarfile {deb.name} failed")


def unpack(debs: Sequence[Path], root: Path) -> list[str]:
    """Unpack ``debs`` into ``root`` (merged /usr), record their control files; returns name=version."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink(f"usr/{link}", root / link)
    status = root / "var/lib/dpkg/status.d"
    status.mkdir(parents=True, exist_ok=True)
    pins = []
    for deb in debs:
        _unpack_one(deb, root)
        control = _run(["dpkg-deb", "--field", str(deb)]).stdout
        fields = dict(line.split(": ", 1) for line in control.decode().splitlines() if ": " in line)
        name = fields["Package"]
        (status / name).write_bytes(control)
        pins.append(f"{name}={fields['Version']}")
    return pins
