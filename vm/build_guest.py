"""Build (or reuse) the coco-dev guest: a Debian 12 root filesystem with
python3, cryptsetup, e2fsprogs and this project installed, as an ext4 image;
the Debian cloud kernel; and a small busybox initramfs that loads the virtio
modules and switches to the ext4 root.

Everything is cached by content hash under ``/var/cache/coco-py-vm`` (outside
the repository, so CI clones on the same machine reuse it):

* ``base-<hash>/rootfs``: debootstrap output plus a venv at ``/opt/coco`` with
  the project's runtime dependencies (hash of the package list and the
  dependency list in pyproject.toml);
* ``guest-<hash>/``: ``rootfs.ext4``, ``initramfs.cpio.gz``, ``vmlinuz`` (hash
  of the base plus every tracked file of the project).

Run as root: ``python vm/build_guest.py`` prints the guest directory.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
BUILDER_VERSION = "2"
GUEST_PYTHON = "3.11.2"  # Debian 12's python3
# pip evaluates environment markers against the host interpreter even with
# --python-version, so dependencies conditional on an older 3.11 patch level
# (redis needs async-timeout below 3.11.3) are named here.
GUEST_MARKER_DEPS = ["async-timeout>=4.0.3"]


def log(msg: str) -> None:
    print(f"build-guest: {msg}", file=sys.stderr, flush=True)


def sh(*args: str, **kw: object) -> None:
    subprocess.run(list(args), check=True, **kw)  # type: ignore[call-overload]


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


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [REPO / f for f in out.decode().split("\0") if f]
    return sorted(f for f in files if f.is_file())


def project_hash() -> str:
    h = hashlib.sha256()
    for f in tracked_files():
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith(("tests/", "bench/", ".ci/")):
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_base() -> Path:
    """debootstrap output, keyed only by the suite and package list."""
    key = digest(BUILDER_VERSION.encode(), SUITE.encode(), ",".join(BASE_PACKAGES).encode())
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


def wheelhouse() -> Path:
    """Wheels of the project's runtime dependencies, resolved on the host
    (whose pip reaches the package index), keyed by the dependency list."""
    deps = runtime_deps()
    key = digest(BUILDER_VERSION.encode(), "\n".join(deps).encode())
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


def build_initramfs(kver: str, out: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    work = out.parent / "initramfs"
    shutil.rmtree(work, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (work / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, work / "bin/busybox")
    for mod in INITRAMFS_MODULES:
        shutil.copy(Path("/lib/modules") / kver / mod, work / "lib/modules" / Path(mod).name)
    names = " ".join(Path(m).name for m in INITRAMFS_MODULES)
    init = work / "init"
    init.write_text(
        "#!/bin/busybox sh\n"
        "/bin/busybox --install -s /bin\n"
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev\n"
        f"for m in {names}; do insmod /lib/modules/$m || echo initramfs: insmod $m failed; done\n"
        "for i in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.05; done\n"
        "mount -t ext4 -o ro /dev/vda /newroot || { echo initramfs: cannot mount root; poweroff -f; }\n"
        "umount /proc /sys; mount --move /dev /newroot/dev\n"
        "exec switch_root /newroot /sbin/coco-init\n"
    )
    init.chmod(0o755)
    buf = subprocess.run(
        ["sh", "-c", "find . | cpio -o -H newc --quiet"], cwd=work, capture_output=True, check=True
    ).stdout
    out.write_bytes(gzip.compress(buf, compresslevel=6))
    shutil.rmtree(work)


def build_guest() -> Path:
    kver = kernel_version()
    rootfs_base = build_base()
    wheels = wheelhouse()
    init_src = REPO / "vm" / "guest"
    key = digest(
        rootfs_base.parent.name.encode(), wheels.name.encode(), kver.encode(), project_hash().encode()
    )
    guest = CACHE / f"guest-{key}"
    if (guest / "done").exists():
        return guest
    log(f"building guest image {guest}")
    shutil.rmtree(guest, ignore_errors=True)
    guest.mkdir(parents=True)
    stage = guest / "stage"
    sh("cp", "-a", str(rootfs_base), str(stage))
    # A venv at /opt/coco with the dependencies and this project (as a wheel),
    # installed offline from local wheels.
    dist = guest / "dist"
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO))
    wheel = next(dist.glob("*.whl"))
    sh("cp", "-a", str(wheels), str(stage / "tmp/wheels"))
    shutil.copy(wheel, stage / "tmp/wheels" / wheel.name)
    sh("chroot", str(stage), "python3", "-m", "venv", "/opt/coco", env=_chroot_env())
    sh(
        "chroot",
        str(stage),
        "/opt/coco/bin/pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        "/tmp/wheels",
        f"/tmp/wheels/{wheel.name}",
        env=_chroot_env(),
    )
    shutil.rmtree(stage / "tmp/wheels")
    # Kernel modules and the guest init.
    sh("cp", "-a", f"/lib/modules/{kver}", str(stage / "lib/modules" / kver))
    sh("depmod", "-b", str(stage), kver)
    for f in init_src.iterdir():
        dst = stage / "sbin" / f.name if f.name == "coco-init" else stage / "opt/coco" / f.name
        shutil.copy(f, dst)
        dst.chmod(0o755)
    size_mb = int(
        subprocess.run(["du", "-sm", str(stage)], capture_output=True, check=True).stdout.split()[0]
    )
    img = guest / "rootfs.ext4"
    sh("mkfs.ext4", "-q", "-F", "-L", "cocoroot", "-d", str(stage), str(img), f"{size_mb + 300}M")
    shutil.rmtree(stage)
    shutil.rmtree(dist)
    shutil.copy(f"/boot/vmlinuz-{kver}", guest / "vmlinuz")
    build_initramfs(kver, guest / "initramfs.cpio.gz")
    (guest / "done").write_text(key)
    return guest


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if os.geteuid() != 0:
        raise SystemExit("build-guest: must run as root (debootstrap, chroot)")
    print(build_guest())


if __name__ == "__main__":
    main()
