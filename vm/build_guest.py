"""Build (or reuse) the coco-dev test guest.

The guest is three files plus one small disk, all cached by content hash under
``/var/cache/coco-py-vm`` (outside the repository, so CI clones on the same
machine reuse them):

* ``debootstrap-<hash>/rootfs``: Debian 12 ``--variant=minbase`` with python3,
  cryptsetup, e2fsprogs (keyed by the suite and package list; once);
* ``wheels-<hash>/``: wheels of the project's runtime dependencies for the
  guest's Python 3.11.2, downloaded on the host (keyed by the dependency list);
* ``rootfs-<hash>/``: ``rootfs.ext4`` (debootstrap + a venv at ``/opt/coco``
  holding the dependencies + the kernel modules + ``/sbin/coco-init``),
  ``vmlinuz`` (the Debian cloud kernel) and ``initramfs.cpio.gz`` (busybox,
  the virtio modules, switch_root to ``/dev/vda``). Keyed by the above, the
  kernel version and the init scripts; it does NOT change when the project's
  code changes;
* ``project-<hash>.ext4``: this project's packages (byte-compiled), its
  console scripts and the guest scenario, on a small separate disk that the
  guest mounts at ``/opt/coco-project`` (``serial=cocoproject``). Keyed by the
  content of exactly the files it holds; rebuilding it takes about a second,
  so commits to the packages do not rebuild the root filesystem.

Run as root (debootstrap, chroot): ``python vm/build_guest.py`` prints a JSON
object with the paths. :func:`build` is the API the harness uses.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CACHE", "GuestImages", "build", "project_files"]

REPO = Path(__file__).resolve().parent.parent
GUEST_SRC = REPO / "vm" / "guest"
CACHE = Path(os.environ.get("COCO_VM_CACHE", "/var/cache/coco-py-vm"))
MIRROR = os.environ.get("COCO_VM_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE_PACKAGES = [
    "python3",
    "python3-venv",
    "cryptsetup-bin",
    "e2fsprogs",
    "kmod",
    "util-linux",
    "iproute2",
    "ca-certificates",
    "procps",
    "runc",  # the guest runs the pulled bundle the way the Kata agent does
]
# Modules the initramfs loads to reach the root disk, in dependency order.
INITRAMFS_MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
]
# Cache-key versions: bump one to force that stage to rebuild.
BASE_VERSION = "2"
ROOTFS_VERSION = "3"
PROJECT_VERSION = "1"
GUEST_PYTHON = "3.11.2"  # Debian 12's python3
# pip evaluates environment markers against the host interpreter even with
# --python-version, so dependencies conditional on an older 3.11 patch level
# (redis needs async-timeout below 3.11.3) are named here.
GUEST_MARKER_DEPS = ["async-timeout>=4.0.3"]
# As installed by Kata's coco-guest-components build; CDH gets
# OCICRYPT_KEYPROVIDER_CONFIG pointing here.
OCICRYPT_CONFIG = {
    "key-providers": {"attestation-agent": {"ttrpc": "unix:///run/confidential-containers/cdh.sock"}}
}


@dataclass(frozen=True)
class GuestImages:
    kernel: Path
    initramfs: Path
    rootfs: Path  # ext4, attached read-only as /dev/vda
    project: Path  # ext4, attached read-only with serial=cocoproject
    built_seconds: float


def log(msg: str) -> None:
    print(f"build-guest: {msg}", file=sys.stderr, flush=True)


def sh(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    subprocess.run(list(args), check=True, env=env, cwd=cwd)


def _chroot_env() -> dict[str, str]:
    """A clean environment for commands in the chroot: the host's pip and
    certificate settings point at files the guest does not have."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def kernel_version() -> str:
    forced = os.environ.get("COCO_VM_KERNEL")
    if forced:
        return forced
    cands = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not cands:
        raise SystemExit("no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64 (make deps-vm)")
    return cands[-1]


def runtime_deps() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def packages() -> list[str]:
    """Top-level packages named by pyproject's ``[tool.setuptools.packages.find] include``."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["packages"]["find"]["include"]
    names = {p.removesuffix("*").rstrip(".") for p in patterns}
    return sorted(n for n in names if (REPO / n / "__init__.py").is_file())


def console_scripts() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time per cache (pytest and `make vm-test` may race)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- stage 1: debootstrap


def build_base() -> Path:
    """debootstrap output, keyed only by the suite and package list."""
    key = digest(BASE_VERSION.encode(), SUITE.encode(), ",".join(BASE_PACKAGES).encode())
    base = CACHE / f"debootstrap-{key}"
    rootfs = base / "rootfs"
    if (base / "done").exists():
        return rootfs
    log(f"debootstrap {SUITE} into {base} (a few minutes, once)")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    sh(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        SUITE,
        str(rootfs),
        MIRROR,
        env=_chroot_env(),
    )
    for d in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / d, ignore_errors=True)
    (base / "done").write_text(key)
    return rootfs


# ---------------------------------------------------------------- stage 2: wheels


def wheelhouse() -> Path:
    """Wheels of the project's runtime dependencies, resolved on the host
    (whose pip reaches the package index), keyed by the dependency list."""
    deps = runtime_deps()
    key = digest(BASE_VERSION.encode(), "\n".join(deps).encode())
    wh = CACHE / f"wheels-{key}"
    if (wh / "done").exists():
        return wh
    log(f"collecting dependency wheels into {wh}")
    shutil.rmtree(wh, ignore_errors=True)
    platforms = [f"manylinux_2_{n}_x86_64" for n in (36, 34, 31, 28, 27, 26, 24, 17, 12, 5)]
    sh(
        sys.executable, "-m", "pip", "download", "-q", "-d", str(wh), "--only-binary=:all:",
        "--python-version", GUEST_PYTHON, "--implementation", "cp",
        *(a for abi in ("cp311", "abi3", "none") for a in ("--abi", abi)),
        *(a for p in [*platforms, "manylinux2014_x86_64", "linux_x86_64", "any"] for a in ("--platform", p)),
        *deps, *GUEST_MARKER_DEPS,
    )  # fmt: skip
    (wh / "done").write_text(key)
    return wh


# ---------------------------------------------------------------- stage 3: root filesystem


def _initramfs_init(names: str) -> str:
    return (
        "#!/bin/busybox sh\n"
        "/bin/busybox --install -s /bin\n"
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev\n"
        f"for m in {names}; do insmod /lib/modules/$m || echo initramfs: insmod $m failed; done\n"
        "for i in $(seq 1 200); do [ -b /dev/vda ] && break; sleep 0.05; done\n"
        "mount -t ext4 -o ro /dev/vda /newroot || { echo initramfs: cannot mount root; poweroff -f; }\n"
        "umount /proc /sys; mount --move /dev /newroot/dev\n"
        "exec switch_root /newroot /sbin/coco-init\n"
    )


def build_initramfs(kver: str, out: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    work = out.parent / "initramfs"
    shutil.rmtree(work, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (work / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, work / "bin/busybox")
    for mod in INITRAMFS_MODULES:
        shutil.copy(Path("/lib/modules") / kver / mod, work / "lib/modules" / Path(mod).name)
    init = work / "init"
    init.write_text(_initramfs_init(" ".join(Path(m).name for m in INITRAMFS_MODULES)))
    init.chmod(0o755)
    buf = subprocess.run(
        ["sh", "-c", "find . | cpio -o -H newc --quiet"], cwd=work, capture_output=True, check=True
    ).stdout
    out.write_bytes(gzip.compress(buf, compresslevel=6))
    shutil.rmtree(work)


def build_rootfs(kver: str) -> tuple[Path, bool]:
    """The root filesystem image, kernel and initramfs; (dir, built_now)."""
    rootfs_base = build_base()
    wheels = wheelhouse()
    init_bytes = (GUEST_SRC / "coco-init").read_bytes()
    key = digest(
        ROOTFS_VERSION.encode(),
        rootfs_base.parent.name.encode(),
        wheels.name.encode(),
        kver.encode(),
        init_bytes,
        _initramfs_init("").encode(),
        json.dumps(OCICRYPT_CONFIG).encode(),
    )
    out = CACHE / f"rootfs-{key}"
    if (out / "done").exists():
        return out, False
    log(f"building the guest root filesystem {out} (about a minute)")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    stage = out / "stage"
    sh("cp", "-a", str(rootfs_base), str(stage))
    # A venv at /opt/coco with the runtime dependencies, installed offline.
    sh("cp", "-a", str(wheels), str(stage / "tmp/wheels"))
    env = _chroot_env()
    sh("chroot", str(stage), "python3", "-m", "venv", "/opt/coco", env=env)
    reqs = [*runtime_deps(), *GUEST_MARKER_DEPS]
    sh(
        "chroot", str(stage), "/opt/coco/bin/pip", "install", "-q", "--no-index",
        "--find-links", "/tmp/wheels", *reqs, env=env,
    )  # fmt: skip
    shutil.rmtree(stage / "tmp/wheels")
    shutil.rmtree(stage / "root/.cache", ignore_errors=True)
    # The project disk's packages come first on sys.path via a .pth file.
    site = next((stage / "opt/coco/lib").glob("python3*/site-packages"))
    (site / "coco-project.pth").write_text("/opt/coco-project/site\n")
    (stage / "opt/coco-project").mkdir(parents=True, exist_ok=True)
    # Kernel modules, the ocicrypt key-provider config, the guest init.
    (stage / "lib/modules").mkdir(parents=True, exist_ok=True)
    sh("cp", "-a", f"/lib/modules/{kver}", str(stage / "lib/modules" / kver))
    sh("depmod", "-b", str(stage), kver)
    (stage / "etc/ocicrypt_config.json").write_text(json.dumps(OCICRYPT_CONFIG) + "\n")
    init = stage / "sbin/coco-init"
    init.write_bytes(init_bytes)
    init.chmod(0o755)
    size_mb = int(
        subprocess.run(["du", "-sm", str(stage)], capture_output=True, check=True).stdout.split()[0]
    )
    img = out / "rootfs.ext4"
    sh("mkfs.ext4", "-q", "-F", "-L", "cocoroot", "-d", str(stage), str(img), f"{size_mb * 11 // 10 + 64}M")
    shutil.rmtree(stage)
    shutil.copy(f"/boot/vmlinuz-{kver}", out / "vmlinuz")
    build_initramfs(kver, out / "initramfs.cpio.gz")
    (out / "done").write_text(key)
    # Keep the cache small: root filesystems other than the newest two go.
    others = sorted(CACHE.glob("rootfs-*"), key=lambda p: p.stat().st_mtime)
    for old in [p for p in others if p != out][:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return out, True


# ---------------------------------------------------------------- stage 4: project disk


def project_files() -> list[tuple[str, Path]]:
    """(path on the project disk, source) for everything the project disk holds."""
    files: list[tuple[str, Path]] = []
    for pkg in packages():
        for f in sorted((REPO / pkg).rglob("*")):
            rel = f.relative_to(REPO)
            if not f.is_file() or "__pycache__" in rel.parts or f.suffix in (".pyc", ".pyo"):
                continue
            files.append((f"site/{rel.as_posix()}", f))
    for f in sorted(GUEST_SRC.iterdir()):
        if f.is_file() and f.name != "coco-init":
            files.append((f"guest/{f.name}", f))
    files.append(("pyproject.toml", REPO / "pyproject.toml"))
    return files


def build_project_disk() -> Path:
    h = hashlib.sha256(PROJECT_VERSION.encode())
    files = project_files()
    for dst, src in files:
        h.update(dst.encode() + b"\0" + hashlib.sha256(src.read_bytes()).digest())
    img = CACHE / f"project-{h.hexdigest()[:16]}.ext4"
    if img.exists():
        return img
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".project-") as tmp:
        stage = Path(tmp) / "stage"
        for dst, src in files:
            p = stage / dst
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, p)
        # Byte-compile on the host (same bytecode as the guest's 3.11): TCG is slow.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0",
             "--invalidation-mode", "unchecked-hash", str(stage / "site")],
            check=True, capture_output=True,
        )  # fmt: skip
        bindir = stage / "bin"
        bindir.mkdir()
        for name, target in console_scripts().items():
            mod, func = target.split(":")
            script = bindir / name
            script.write_text(
                f"#!/opt/coco/bin/python\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n"
            )
            script.chmod(0o755)
        tmp_img = Path(tmp) / "project.ext4"
        size_mb = int(
            subprocess.run(["du", "-sm", str(stage)], capture_output=True, check=True).stdout.split()[0]
        )
        sh(
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "cocoproject",
            "-d",
            str(stage),
            str(tmp_img),
            f"{size_mb * 2 + 16}M",
        )
        os.replace(tmp_img, img)
    # Keep the cache small: project disks older than the newest few go.
    disks = sorted(CACHE.glob("project-*.ext4"), key=lambda p: p.stat().st_mtime)
    for old in disks[:-8]:
        old.unlink(missing_ok=True)
    return img


def build() -> GuestImages:
    """Build what is missing (as root) and return the paths; reuses the cache."""
    import time

    t0 = time.monotonic()
    kver = kernel_version()
    with cache_lock():
        rootfs_dir, _ = build_rootfs(kver)
        project = build_project_disk()
    return GuestImages(
        kernel=rootfs_dir / "vmlinuz",
        initramfs=rootfs_dir / "initramfs.cpio.gz",
        rootfs=rootfs_dir / "rootfs.ext4",
        project=project,
        built_seconds=round(time.monotonic() - t0, 1),
    )


def main() -> None:
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args()
    if os.geteuid() != 0:
        raise SystemExit("build-guest: must run as root (debootstrap, chroot)")
    images = build()
    print(json.dumps({k: str(v) for k, v in asdict(images).items()}))


if __name__ == "__main__":
    main()
