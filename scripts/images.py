"""``make images``: reproducible OCI images of the KBS and the guest tools, run as real containers.

1. Builds the project's wheel (``python -m build``), downloads Debian 12's
   python3.11 and the libraries it needs as ``.deb`` files (``apt-get
   download``) and the dependency wheels (``pip download``, for the image's
   Python 3.11.2), all cached outside the repository.
2. Builds both images twice, each time from scratch in a fresh directory:
   layer 1 is the Debian packages (scripts/images_debs.py), layer 2 the
   dependency set (server for the KBS image, guest for the guest tools), layer
   3 the project's wheel, its console scripts and the default configuration.
   Byte-compiled with hash-checked ``.pyc`` files; every layer is written by
   scripts/images_oci.py (sorted entries, fixed mtimes, owners and gzip
   headers; ``SOURCE_DATE_EPOCH``: the environment's, else the last commit's
   time). ``reproducible`` is true only if both builds gave the same digests.
3. Pushes both to a throwaway ``docker-registry`` on 127.0.0.1 with ``skopeo``
   (checking the registry serves the same manifest digest), pulls the KBS image
   by digest with ``coco-image pull`` into a bundle, and runs that bundle with
   ``runc``: its own network namespace (created here, loopback only) and a
   read-only ``/etc/kbs`` holding the configuration, TLS key and admin key, the
   two things a container runtime adds to an image's spec. The image's
   rootfs and config are used unchanged.
4. Against that containerised KBS (HTTPS on 127.0.0.1:8080 inside the
   namespace), ``kbs-client`` seeds a resource and a resource policy with an
   admin token, and a sample-TEE ``kbs-client`` attests and reads it back.
5. Pulls the guest tools image the same way and runs its default command
   (``coco-verify --help``) with ``runc``, bundle unchanged.

Ends with ``images: OK {json}`` (exit 0) or ``images: FAILED <reason>`` (exit 1).
Needs root (runc, network namespaces, overlay mounts). Knobs:
``COCO_IMAGES_CACHE`` (default /var/cache/coco-py-images), ``COCO_IMAGES_KEEP=1``
(keep the work directory), ``SOURCE_DATE_EPOCH``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts import images_debs, images_oci  # noqa: E402

__all__ = ["ImageDef", "build_images", "main"]

BIN = REPO / ".venv" / "bin"
CACHE = Path(os.environ.get("COCO_IMAGES_CACHE", "/var/cache/coco-py-images"))
PY_TAG = "python3.11"
IMAGE_PYTHON = "3.11.2"  # Debian 12's python3.11
SITE = f"opt/coco/lib/{PY_TAG}/site-packages"
NONROOT = (65532, 65532)
# pip evaluates environment markers against the interpreter that runs it, even
# with --python-version: dependencies conditional on an older 3.11 patch level
# (redis needs async-timeout below 3.11.3) are named here.
MARKER_DEPS = {"redis": ["async-timeout>=4.0.3"]}
KBS_PORT = 8080

KBS_DEFAULT_CONFIG = f"""\
# The KBS image's default configuration: HTTPS only, admin API behind a bearer
# token from the issuer "kbs-admin", resources on the local file system, no
# sample or other development verifier. Mount a directory at /etc/kbs that
# holds this file (edited as needed), admin.pub (the admin token issuer's
# public key), tls.crt and tls.key: without them the KBS refuses to start.
[http_server]
sockets = ["0.0.0.0:{KBS_PORT}"]
insecure_http = false
private_key = "/etc/kbs/tls.key"
certificate = "/etc/kbs/tls.crt"

[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [ {{ issuer = "kbs-admin", audience = "KBS", public_key_uri = "/etc/kbs/admin.pub" }} ]
[admin.authorization.regex_acl]
acls = [ {{ role = "admin", allowed_endpoints = "^/kbs/.+$" }} ]

[attestation_token]

[attestation_service]
type = "coco_as_builtin"

[storage_backend]
storage_type = "LocalFs"
[storage_backend.backends.local_fs]
dir_path = "/var/lib/kbs/repository"

[[plugins]]
name = "resource"
"""

RESOURCE_POLICY = b"""package policy

import rego.v1

default allow := false

# The ship check's probe only, to any attested client (the sample TEE included).
allow if {
	data.plugin == "resource"
	data["resource-path"] == ["default", "ship", "probe"]
}
"""


def say(msg: str) -> None:
    print(msg, flush=True)


class ImagesError(Exception):
    """A step of ``make images`` failed."""


def _run(
    args: Sequence[str], *, timeout: float = 600, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    cp: subprocess.CompletedProcess[bytes] = subprocess.run(
        list(args), capture_output=True, timeout=timeout, **kw
    )
    if check and cp.returncode != 0:
        err = (cp.stderr or cp.stdout).decode(errors="replace").strip()[-600:]
        raise ImagesError(f"{' '.join(str(a) for a in args[:3])} failed ({cp.returncode}): {err}")
    return cp


# ------------------------------------------------------------------ inputs


def source_date_epoch() -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    cp = _run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], check=False)
    out = cp.stdout.decode().strip()
    return int(out) if cp.returncode == 0 and out.isdigit() else 0


def build_wheel(out: Path, epoch: int) -> Path:
    """The project's wheel, built by ``python -m build`` (no isolation: the
    venv's setuptools, so nothing is fetched)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools reuses stale files from it
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    _run([str(BIN / "python"), "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
         env=env, cwd=REPO)  # fmt: skip
    wheels = sorted(out.glob("coco_py-*.whl"))
    if len(wheels) != 1:
        raise ImagesError(f"python -m build left {len(wheels)} wheels in {out}")
    shutil.rmtree(REPO / "build", ignore_errors=True)
    return wheels[0]


def requirement_sets() -> dict[str, list[str]]:
    """The dependency set of each image: the runtime dependencies plus the
    ``server`` / ``guest`` extra where pyproject defines one."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    base = list(data["project"].get("dependencies", []))
    extras = data["project"].get("optional-dependencies", {})
    out: dict[str, list[str]] = {}
    for name in ("server", "guest"):
        reqs = base + list(extras.get(name, []))
        for dist, more in MARKER_DEPS.items():
            if any(r.split(">")[0].split("=")[0].split("[")[0].strip() == dist for r in reqs):
                reqs += more
        out[name] = reqs
    return out


def _pip_target_args() -> list[str]:
    platforms = [f"manylinux_2_{n}_x86_64" for n in (36, 34, 31, 28, 27, 26, 24, 17, 12, 5)]
    return [
        "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp",
        *(a for abi in ("cp311", "abi3", "none") for a in ("--abi", abi)),
        *(a for p in [*platforms, "manylinux2014_x86_64", "linux_x86_64", "any"] for a in ("--platform", p)),
    ]  # fmt: skip


def wheelhouse(reqs: Sequence[str]) -> Path:
    """Binary wheels of ``reqs`` for the image's Python, cached by the requirement list."""
    key = hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:16]
    wh = CACHE / f"wheels-{key}"
    if (wh / "done").exists():
        return wh
    say(f"images: downloading dependency wheels into {wh}")
    shutil.rmtree(wh, ignore_errors=True)
    wh.mkdir(parents=True)
    _run([str(BIN / "python"), "-m", "pip", "download", "-q", "-d", str(wh), *_pip_target_args(), *reqs],
         timeout=900)  # fmt: skip
    (wh / "done").write_text(key)
    return wh


# ------------------------------------------------------------------ the images


@dataclass(frozen=True)
class ImageDef:
    name: str  # also the tag in the layout and the repository name in the registry
    deps: str  # requirement set
    scripts: tuple[str, ...]  # console scripts written to /opt/coco/bin
    spec: images_oci.ImageSpec
    files: tuple[tuple[str, bytes, int], ...] = ()  # (path, content, mode) in layer 3
    dirs: tuple[tuple[str, int, tuple[int, int]], ...] = ()  # (path, mode, owner) in layer 3


PATH_ENV = "PATH=/opt/coco/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_defs(version: str) -> list[ImageDef]:
    labels = {
        "org.opencontainers.image.title": "",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": "debian:12 (python3.11 from .deb packages)",
    }
    return [
        ImageDef(
            name="kbs",
            deps="server",
            scripts=("kbs", "kbs-client"),
            spec=images_oci.ImageSpec(
                entrypoint=["/opt/coco/bin/kbs"],
                cmd=["--config-file", "/etc/kbs/kbs-config.toml"],
                env=[PATH_ENV, "LANG=C.UTF-8"],
                user=f"{NONROOT[0]}:{NONROOT[1]}",
                working_dir="/var/lib/kbs",
                labels={**labels, "org.opencontainers.image.title": "coco-py reference KBS"},
                exposed_ports=[f"{KBS_PORT}/tcp"],
            ),
            files=(("etc/kbs/kbs-config.toml", KBS_DEFAULT_CONFIG.encode(), 0o644),),
            dirs=(("var/lib/kbs", 0o750, NONROOT),),
        ),
        ImageDef(
            name="guest-tools",
            deps="guest",
            scripts=(
                "attestation-agent",
                "confidential-data-hub",
                "cdh-oneshot",
                "api-server-rest",
                "coco-image",
                "coco-verify",
                "coco-guest-pull",
                "kbs-client",
            ),
            spec=images_oci.ImageSpec(
                entrypoint=[],
                cmd=["/opt/coco/bin/coco-verify", "--help"],
                env=[PATH_ENV, "LANG=C.UTF-8"],
                user="0:0",
                working_dir="/",
                labels={**labels, "org.opencontainers.image.title": "coco-py guest components"},
            ),
        ),
    ]


def _base_extras(root: Path) -> None:
    """What an installed Debian system has that no package in the set ships."""
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"nonroot:x:{NONROOT[0]}:{NONROOT[1]}:nonroot:/var/lib/kbs:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT[1]}:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (etc / "os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
    )
    for d, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("run", 0o755)):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(mode)
    for p in (root / "etc/passwd", root / "etc/group", root / "etc/nsswitch.conf", root / "etc/hosts",
              root / "etc/os-release"):  # fmt: skip
        p.chmod(0o644)


def _compile(tree: Path, sub: str) -> None:
    """Byte-compile ``tree/sub`` for the image's python3.11 (hash-checked .pyc,
    so no source mtime is recorded; file names as the image sees them)."""
    py = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
    cp = _run(
        [py, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash",
         "-s", str(tree), "-p", "/", str(tree / sub)],
        check=False, env={"PATH": os.environ.get("PATH", ""), "SOURCE_DATE_EPOCH": "0"},
    )  # fmt: skip
    if cp.returncode != 0:
        out = (cp.stdout + cp.stderr).decode(errors="replace").strip().splitlines()
        # Files with syntax for other Python versions (vendored tests) are left as source.
        bad = [line for line in out if line.startswith("***")]
        if not bad:
            raise ImagesError(f"compileall failed: {out[-3:]}")


def _pip_install(target: Path, wh: Path, reqs: Sequence[str], *, no_deps: bool = False) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run(
        [str(BIN / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wh),
         "--target", str(target), "--no-compile", "--no-warn-script-location", *_pip_target_args(),
         *(["--no-deps"] if no_deps else []), *reqs],
        timeout=900,
    )  # fmt: skip
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts: written below, for /opt/coco


def _console_scripts(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(name).decode()
    out: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            k, v = (s.strip() for s in line.split("=", 1))
            out[k] = v
    return out


def _app_tree(root: Path, image: ImageDef, wheel: Path, wh: Path) -> None:
    _pip_install(root / SITE, wh, [str(wheel)], no_deps=True)
    # pip records where a wheel given by path came from; the image must not depend on it
    for direct in (root / SITE).glob("*.dist-info/direct_url.json"):
        record = direct.parent / "RECORD"
        record.write_text(
            "".join(
                line
                for line in record.read_text().splitlines(keepends=True)
                if not line.startswith(f"{direct.parent.name}/direct_url.json,")
            )
        )
        direct.unlink()
    venv = root / "opt/coco"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {IMAGE_PYTHON}\n"
    )
    os.symlink(f"/usr/bin/{PY_TAG}", venv / "bin/python3")
    os.symlink("python3", venv / "bin/python")
    entry = _console_scripts(wheel)
    for name in image.scripts:
        mod, func = entry[name].split(":")
        p = venv / "bin" / name
        # the __main__ guard matters: the KBS's policy workers start from a forkserver, whose
        # children re-import the launching script as __mp_main__ (a second KBS otherwise)
        p.write_text(
            f"#!/opt/coco/bin/python3\nimport sys\n\nfrom {mod} import {func}\n\n"
            f'if __name__ == "__main__":\n    sys.exit({func}())\n'
        )
        p.chmod(0o755)
    for rel, data, mode in image.files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    for rel, mode, _ in image.dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)


def unresolved_libraries(lowers_top_first: Sequence[Path], scratch: Path) -> list[str]:
    """Shared objects under the image's site-packages whose libraries the image
    lacks: the image's own dynamic loader lists each one's dependencies
    (``ld.so --list``) in a read-only overlay of the given trees."""
    mnt = scratch / "check-root"
    mnt.mkdir(parents=True)
    _run(["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(str(p) for p in lowers_top_first),
          str(mnt)])  # fmt: skip
    try:
        missing: list[str] = []
        for so in sorted((mnt / SITE).rglob("*.so*")):
            if not so.is_file() or so.is_symlink():
                continue
            rel = "/" + str(so.relative_to(mnt))
            cp = _run(["chroot", str(mnt), "/usr/lib64/ld-linux-x86-64.so.2", "--list", rel], check=False)
            missing += [
                f"{rel}: {line.split()[0]}" for line in cp.stdout.decode().splitlines() if "not found" in line
            ]
        return missing
    finally:
        _run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def build_images(
    work: Path,
    *,
    wheel: Path,
    debs: Sequence[Path],
    wheelhouses: dict[str, Path],
    epoch: int,
    images: Sequence[ImageDef],
) -> dict[str, str]:
    """Build every image from scratch under ``work`` into the layout ``work/layout``;
    returns image name -> manifest digest."""
    layout = work / "layout"
    blobs = work / "blobs"
    blobs.mkdir(parents=True)
    base = work / "base"
    images_debs.unpack(debs, base)
    _base_extras(base)
    _compile(base, f"usr/lib/{PY_TAG}")
    base_layer = images_oci.write_layer(
        base, blobs / "base.tar.gz", epoch=epoch,
        created_by=f"Debian 12 {PY_TAG} from .deb packages: {', '.join(p.name for p in debs)}",
    )  # fmt: skip
    digests: dict[str, str] = {}
    deps_layers: dict[str, tuple[images_oci.Layer, Path]] = {}
    for image in images:
        if image.deps not in deps_layers:
            deps_root = work / f"deps-{image.deps}"
            wh = wheelhouses[image.deps]
            _pip_install(deps_root / SITE, wh, requirement_sets()[image.deps])
            _compile(deps_root, SITE)
            missing = unresolved_libraries([deps_root, base], work)
            if missing:
                raise ImagesError(f"the {image.deps} set needs libraries the image lacks: {missing[:5]}")
            blob = blobs / f"deps-{image.deps}.tar.gz"
            deps_layers[image.deps] = (
                images_oci.write_layer(
                    deps_root, blob, epoch=epoch, created_by=f"pip install ({image.deps} dependency set)"
                ),
                blob,
            )
        app = work / f"app-{image.name}"
        _app_tree(app, image, wheel, wheelhouses[image.deps])
        _compile(app, SITE)
        app_blob = blobs / f"app-{image.name}.tar.gz"
        app_layer = images_oci.write_layer(
            app, app_blob, epoch=epoch, created_by=f"pip install {wheel.name}; {image.name} defaults",
            owners={rel: owner for rel, _, owner in image.dirs},
        )  # fmt: skip
        # a blob shared by several images moves into the layout once (write_layout skips it after)
        dl, dblob = deps_layers[image.deps]
        digests[image.name] = images_oci.write_layout(
            layout, image.name, [(base_layer, blobs / "base.tar.gz"), (dl, dblob), (app_layer, app_blob)], image.spec,
            epoch=epoch,
        )  # fmt: skip
    for name in ("base", *(f"deps-{d}" for d in deps_layers), *(f"app-{i.name}" for i in images)):
        shutil.rmtree(work / name, ignore_errors=True)
    shutil.rmtree(blobs, ignore_errors=True)
    return digests


# ------------------------------------------------------------------ registry, pull, run


def _registry_digest(host: str, creds: str, repo: str, tag: str) -> str:
    raw = _run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds,
                f"docker://{host}/{repo}:{tag}"]).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One downloader at a time per cache (two ``make images`` may run at once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace with only loopback, removed afterwards."""
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        _run(["ip", "netns", "del", name], check=False)


def runtime_spec(bundle: Path, *, netns_path: str, config_dir: Path) -> dict[str, Any]:
    """The pulled bundle's spec plus what a container runtime adds: the
    network namespace it made and the configuration mount. Nothing else changes."""
    spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    spec["root"]["path"] = str((bundle / spec["root"]["path"]).resolve())
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = netns_path
    spec["mounts"].append(
        {"destination": "/etc/kbs", "type": "bind", "source": str(config_dir),
         "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
    )  # fmt: skip
    return spec


def _in_ns(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return _run(["ip", "netns", "exec", ns, *args], check=False, timeout=timeout)


def _wait_healthy(ns: str, ca: Path, runc: list[str], cid: str, log: Path, timeout: float = 120) -> float:
    t0 = time.monotonic()
    probe = (
        "import ssl,sys,urllib.request as u\n"
        f"c=ssl.create_default_context(cafile={str(ca)!r})\n"
        f"sys.exit(0 if u.urlopen('https://127.0.0.1:{KBS_PORT}/healthz',context=c,timeout=5).status==200 else 1)"
    )
    while time.monotonic() - t0 < timeout:
        if _in_ns(ns, str(BIN / "python"), "-c", probe, timeout=30).returncode == 0:
            return time.monotonic() - t0
        st = _run([*runc, "state", cid], check=False)
        if st.returncode != 0 or json.loads(st.stdout or b"{}").get("status") != "running":
            raise ImagesError(f"the KBS container stopped: {log.read_text(errors='replace')[-800:]}")
        time.sleep(0.5)
    raise ImagesError(f"the containerised KBS did not answer /healthz in {timeout:.0f}s")


def run_kbs_container(work: Path, registry_host: str, auth: Path, digest: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tests.support.kbs import make_admin_token
    from tests.support.registry import make_ca

    bundle, store = work / "bundle", work / "store"
    ref = f"{registry_host}/coco/kbs@{digest}"
    t = time.monotonic()
    _run([str(BIN / "coco-image"), "pull", "--plain-http", registry_host, "--auth-file", str(auth),
          "--bundle", str(bundle), "--work-dir", str(store), ref], timeout=600)  # fmt: skip
    pull_s = round(time.monotonic() - t, 1)
    say(f"images: coco-image pull {ref} -> {bundle} ({pull_s}s)")
    rootfs = bundle / "rootfs"
    try:
        pulled = json.loads((bundle / "config.json").read_text())
        # /etc/kbs as an operator mounts it: the image's default config (plus the
        # development verifier switch the test needs), TLS material, the admin key
        cfg_dir = work / "etc-kbs"
        cfg_dir.mkdir(mode=0o755)
        cfg_text = (rootfs / "etc/kbs/kbs-config.toml").read_text()
        (cfg_dir / "kbs-config.toml").write_text(cfg_text + dev_verifiers_toml())
        ca, cert, key = make_ca(work / "tls", hosts=("127.0.0.1", "localhost"))
        shutil.copyfile(cert, cfg_dir / "tls.crt")
        shutil.copyfile(key, cfg_dir / "tls.key")
        admin = ed25519.Ed25519PrivateKey.generate()
        (cfg_dir / "admin.pub").write_bytes(admin.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        for f in cfg_dir.iterdir():
            os.chown(f, 0, NONROOT[1])
            f.chmod(0o640)
        token = work / "admin-token"
        token.write_text(make_admin_token(admin, issuer="kbs-admin"))
        token.chmod(0o600)
        cid = f"coco-kbs-{os.getpid()}"
        with netns(cid) as ns:
            runb = work / "runtime-bundle"
            runb.mkdir()
            (runb / "config.json").write_text(
                json.dumps(runtime_spec(bundle, netns_path=f"/var/run/netns/{ns}", config_dir=cfg_dir))
            )
            runc = ["runc", "--root", str(work / "runc-state")]
            log = work / "kbs-container.log"
            with log.open("wb") as lf:
                cp = subprocess.run(
                    [*runc, "run", "--detach", "--bundle", str(runb), cid],
                    stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, timeout=120,
                )  # fmt: skip
            if cp.returncode != 0:
                raise ImagesError(f"runc refused the bundle: {log.read_text(errors='replace')[-600:]}")
            try:
                state = json.loads(_run([*runc, "state", cid]).stdout)
                up_s = _wait_healthy(ns, ca, runc, cid, log)
                say(f"images: runc container {cid} (pid {state['pid']}) serves HTTPS after {up_s:.1f}s")
                result = _exercise(ns, ca, token, work)
                result.update(
                    container_pid=state["pid"],
                    container_user=pulled["process"]["user"],
                    kbs_up_seconds=round(up_s, 1),
                    pull_seconds=pull_s,
                )
                return result
            finally:
                _run([*runc, "kill", cid, "KILL"], check=False)
                _run([*runc, "delete", "--force", cid], check=False)
    finally:
        _run(["umount", str(rootfs)], check=False)


def dev_verifiers_toml() -> str:
    """Development verifiers (the sample TEE) are off in the image's default
    configuration; this run switches the sample one on, explicitly
    (``[security] dev_verifiers``)."""
    return '\n# this run only: the unsigned sample TEE, for kbs-client without TEE hardware\n[security]\ndev_verifiers = ["sample"]\n'


def _exercise(ns: str, ca: Path, token: Path, work: Path) -> dict[str, Any]:
    url = f"https://127.0.0.1:{KBS_PORT}"
    client = [str(BIN / "kbs-client"), "--url", url, "--cert-file", str(ca)]
    admin = [*client, "config", "--admin-token-file", str(token)]
    secret = b"released by the containerised KBS " + os.urandom(8).hex().encode()
    (work / "probe").write_bytes(secret)
    (work / "policy.rego").write_bytes(RESOURCE_POLICY)
    for args in (
        ["set-resource", "--path", "default/ship/probe", "--resource-file", str(work / "probe")],
        ["set-resource-policy", "--policy-file", str(work / "policy.rego")],
    ):
        cp = _in_ns(ns, *admin, *args)
        if cp.returncode != 0:
            raise ImagesError(
                f"kbs-client {args[0]}: {(cp.stderr or cp.stdout).decode(errors='replace')[-400:]}"
            )
    say("images: kbs-client seeded default/ship/probe and a resource policy (admin token)")
    # without the admin token the same call is refused
    unauth = _in_ns(ns, *client, "config", "set-resource", "--path", "default/ship/x",
                    "--resource-file", str(work / "probe"))  # fmt: skip
    cp = _in_ns(ns, *client, "get-resource", "--path", "default/ship/probe")
    got = base64.b64decode(cp.stdout.strip()) if cp.returncode == 0 else b""
    other = _in_ns(ns, *client, "get-resource", "--path", "default/ship/other")
    ok = got == secret
    say(f"images: sample-TEE kbs-client attested and read the resource back: {'match' if ok else 'MISMATCH'}")
    if not ok:
        raise ImagesError(f"get-resource: rc {cp.returncode}: {cp.stderr.decode(errors='replace')[-400:]}")
    return {
        "resource_ok": ok,
        "unauthenticated_admin_refused": unauth.returncode != 0,
        "unlisted_resource_refused": other.returncode != 0,
    }


# ------------------------------------------------------------------ main


def run_guest_tools(work: Path, registry_host: str, auth: Path, digest: str) -> dict[str, Any]:
    """Pull the guest tools image by digest and run its default command with
    runc, bundle unchanged (foreground; runc gives the container's exit status)."""
    bundle, store = work / "guest-bundle", work / "guest-store"
    ref = f"{registry_host}/coco/guest-tools@{digest}"
    _run([str(BIN / "coco-image"), "pull", "--plain-http", registry_host, "--auth-file", str(auth),
          "--bundle", str(bundle), "--work-dir", str(store), ref], timeout=600)  # fmt: skip
    try:
        cid = f"coco-guest-tools-{os.getpid()}"
        cp = _run(["runc", "--root", str(work / "runc-state"), "run", "--bundle", str(bundle), cid],
                  check=False, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
        _run(["runc", "--root", str(work / "runc-state"), "delete", "--force", cid], check=False)
        out = cp.stdout.decode(errors="replace")
        say(f"images: runc ran the guest tools image ({ref.split('@')[0]}): exit {cp.returncode}")
        if cp.returncode != 0 or "usage: coco-verify" not in out:
            raise ImagesError(f"the guest tools container failed: {(cp.stderr or cp.stdout).decode()[-400:]}")
        return {"guest_tools_exit": cp.returncode, "guest_tools_stdout": out.splitlines()[0][:120]}
    finally:
        _run(["umount", str(bundle / "rootfs")], check=False)


def _runtime_version() -> str:
    out = _run(["runc", "--version"]).stdout.decode().splitlines()
    return out[0] if out else "runc"


def run(keep: bool) -> dict[str, Any]:
    from tests.support.registry import RegistryServer

    t_start = time.monotonic()
    epoch = source_date_epoch()
    work = Path(tempfile.mkdtemp(prefix="coco-images-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        say(f"images: SOURCE_DATE_EPOCH={epoch}; work dir {work}")
        wheel = build_wheel(work / "dist", epoch)
        say(f"images: built {wheel.name}")
        with cache_lock():
            debs = images_debs.download(images_debs.PYTHON_RUNTIME, CACHE)
            say(f"images: {len(debs)} Debian packages ({CACHE})")
            wheelhouses = {name: wheelhouse(reqs) for name, reqs in requirement_sets().items()}
        defs = image_defs(version=wheel.name.split("-")[1])
        builds: list[dict[str, str]] = []
        build_s: list[float] = []
        for i in (1, 2):
            t = time.monotonic()
            builds.append(
                build_images(
                    work / f"build{i}",
                    wheel=wheel,
                    debs=debs,
                    wheelhouses=wheelhouses,
                    epoch=epoch,
                    images=defs,
                )
            )
            build_s.append(round(time.monotonic() - t, 1))
            say(f"images: build {i}: {json.dumps(builds[-1])} ({build_s[-1]}s)")
        reproducible = builds[0] == builds[1]
        layout = work / "build1" / "layout"
        shutil.rmtree(work / "build2", ignore_errors=True)
        registry = RegistryServer(work / "registry")
        try:
            user, pw = next(iter(registry.users.items()))
            creds = f"{user}:{pw}"
            for d in defs:
                _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", creds,
                      f"oci:{layout}:{d.name}", f"docker://{registry.host}/coco/{d.name}:v1"])  # fmt: skip
                served = _registry_digest(registry.host, creds, f"coco/{d.name}", "v1")
                if served != builds[0][d.name]:
                    raise ImagesError(f"the registry serves {served} for {d.name}, built {builds[0][d.name]}")
            say(f"images: skopeo pushed both to docker-registry {registry.host} (digests preserved)")
            auth = work / "auth.json"
            auth.write_text(json.dumps(registry.auth_json()))
            res = run_kbs_container(work, registry.host, auth, builds[0]["kbs"])
            res.update(run_guest_tools(work, registry.host, auth, builds[0]["guest-tools"]))
        finally:
            registry.stop()
        sizes = {}
        for d in defs:
            man = json.loads((layout / "blobs/sha256" / builds[0][d.name].split(":")[1]).read_bytes())
            sizes[d.name] = round(sum(layer["size"] for layer in man["layers"]) / 2**20, 1)
        return {
            "kbs_image": builds[0]["kbs"],
            "guest_image": builds[0]["guest-tools"],
            "reproducible": reproducible,
            "second_build": builds[1],
            "source_date_epoch": epoch,
            "runtime": _runtime_version(),
            **res,
            "compressed_mb": sizes,
            "build_seconds": build_s,
            "seconds": round(time.monotonic() - t_start, 1),
        }
    finally:
        if keep:
            say(f"images: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--keep", action="store_true", default=os.environ.get("COCO_IMAGES_KEEP") == "1")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        say("images: FAILED needs root (runc, network namespaces, overlay mounts)")
        return 1
    missing = [
        t for t in ("runc", "skopeo", "docker-registry", "apt-get", "dpkg-deb", "ip") if not shutil.which(t)
    ]
    if missing:
        say(f"images: FAILED not installed: {', '.join(missing)} (scripts/install-deps.sh installs them)")
        return 1
    try:
        summary = run(args.keep)
    except (ImagesError, images_debs.DebError, images_oci.LayoutError, subprocess.TimeoutExpired) as exc:
        say(f"images: FAILED {exc}")
        return 1
    say("images: OK " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
