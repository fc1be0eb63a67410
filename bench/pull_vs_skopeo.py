"""Pull + unpack: ``coco-image pull`` against ``skopeo copy`` + ``umoci unpack``.

Builds a multi-layer image of ``--size-mb`` uncompressed MB with many files
(Python tarfile, layers added with ``umoci raw add-layer``), pushes it to a
local htpasswd-protected docker-registry, then for each target filesystem
(tmpfs ``/dev/shm`` and disk ``/var/tmp``) measures, ``--reps`` times each:

* coco-image pull (fresh work dir: no layer cache) into a bundle,
* skopeo copy docker://... oci:... then umoci unpack (the peer),
* the floor: download + sha256 + gunzip + diff_id sha256, no unpack (Python, one pass,
  gunzip on zlib-ng: the inflater the pull itself ships with),
* with ``--baseline CHECKOUT``: the same pull from another checkout's sources
  (``PYTHONPATH=CHECKOUT``, this venv), interleaved with ours: a before/after.

Each measured step starts after an (untimed) ``sync`` and the two sides
alternate who goes first, so write-back of one side's files is not billed to
the other. Timings on a shared machine are noisy: compare the ratio, and CPU.

Reports medians of wall time, CPU (user+sys) and peak RSS, and the ratio
coco / (skopeo + umoci). Usage:

    .venv/bin/python bench/pull_vs_skopeo.py [--size-mb 320] [--reps 3] [--targets shm,disk]
"""

from __future__ import annotations

import argparse
import base64
import compileall
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from zlib_ng import zlib_ng

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.registry import PASSWORD, USER, RegistryServer  # noqa: E402

WORDS = [
    b"alpha",
    b"beta",
    b"gamma",
    b"delta",
    b"kernel",
    b"python",
    b"import",
    b"return",
    b"class",
    b"def",
    b"self",
    b"value",
    b"error",
    b"config",
    b"layer",
    b"image",
    b"digest",
    b"vector",
]


def _content(rng: random.Random, size: int) -> bytes:
    """Mix of compressible text and random bytes (ratio roughly like a distro image)."""
    if rng.random() < 0.3:
        return rng.randbytes(size)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(WORDS) for _ in range(16)) + b"\n"
    return bytes(out[:size])


def build_layers(dest: Path, size_mb: int, layers: int, seed: int = 1) -> list[Path]:
    rng = random.Random(seed)
    per_layer = size_mb * 1_000_000 // layers
    paths = []
    for li in range(layers):
        p = dest / f"layer{li}.tar"
        written = 0
        nfiles = 0
        with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as t:
            d = tarfile.TarInfo(f"l{li}")
            d.type = tarfile.DIRTYPE
            d.mode = 0o755
            t.addfile(d)
            sub = 0
            while written < per_layer:
                if nfiles % 200 == 0:
                    sub += 1
                    d = tarfile.TarInfo(f"l{li}/d{sub}")
                    d.type = tarfile.DIRTYPE
                    d.mode = 0o755
                    t.addfile(d)
                # many small files, some big ones (like /usr/lib)
                size = int(
                    rng.choice(
                        [200, 1_000, 4_000, 12_000, 40_000, 300_000, 2_000_000][: 5 + (nfiles % 7 == 0)]
                    )
                )
                data = _content(rng, size)
                ti = tarfile.TarInfo(f"l{li}/d{sub}/f{nfiles}.dat")
                ti.size = len(data)
                ti.mode = 0o644
                ti.mtime = 1700000000
                t.addfile(ti, io.BytesIO(data))
                written += size
                nfiles += 1
                if nfiles % 50 == 0:
                    s = tarfile.TarInfo(f"l{li}/d{sub}/link{nfiles}")
                    s.type = tarfile.SYMTYPE
                    s.linkname = f"f{nfiles - 1}.dat"
                    t.addfile(s)
        paths.append(p)
    return paths


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    cp = subprocess.run(args, capture_output=True, **kw)  # type: ignore[call-overload]
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}: {cp.stderr.decode(errors='replace')[-400:]}")
    return cp  # type: ignore[no-any-return]


def build_image(cache: Path, size_mb: int, layers: int) -> str:
    lay = cache / f"layout-{size_mb}mb-{layers}l"
    ref = f"{lay}:bench"
    if (lay / "index.json").exists():
        return ref
    tmp = cache / "build"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.rmtree(lay, ignore_errors=True)
    run(["umoci", "init", "--layout", str(lay)])
    run(["umoci", "new", "--image", ref])
    run(["umoci", "config", "--image", ref, "--config.cmd", "/bin/sh"])
    for p in build_layers(tmp, size_mb, layers):
        run(["umoci", "raw", "add-layer", "--image", ref, str(p)])
        p.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    return ref


def measured(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall s, cpu s, peak RSS KiB) of one child process."""
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read() if p.stderr else b""
    if status != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {err.decode(errors='replace')[-400:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def umount_under(path: Path) -> None:
    for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt.startswith(str(path)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def floor(reg: RegistryServer, repo: str) -> tuple[float, float]:
    """One-pass download + sha256 + gunzip + diff_id sha256 of every layer (no unpack).

    gunzip on zlib-ng, the inflater the pull uses: the floor of this work with our tools."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    t0 = time.monotonic()
    c0 = time.process_time()
    req = urllib.request.Request(
        f"http://{reg.host}/v2/{repo}/manifests/bench",
        headers={"Authorization": auth, "Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    man = json.loads(urllib.request.urlopen(req).read())
    for layer in man["layers"]:
        r = urllib.request.urlopen(
            urllib.request.Request(
                f"http://{reg.host}/v2/{repo}/blobs/{layer['digest']}", headers={"Authorization": auth}
            )
        )
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        d = zlib_ng.decompressobj(wbits=31)
        while chunk := r.read(1 << 20):
            h1.update(chunk)
            h2.update(d.decompress(chunk))
        assert "sha256:" + h1.hexdigest() == layer["digest"]
    return time.monotonic() - t0, time.process_time() - c0


def byte_compile(checkout: Path) -> None:
    """Write the .pyc files of ``checkout``'s packages, as a wheel install does: with
    PYTHONDONTWRITEBYTECODE set (or a read-only tree) every worker process would
    otherwise compile every module it imports, some 25 ms each, on both sides."""
    for pkg in sorted(checkout.iterdir()):
        if (pkg / "__init__.py").is_file() and pkg.name not in ("tests", "bench", "scripts"):
            compileall.compile_dir(pkg, quiet=1)


LABELS = {
    "coco": "coco-image pull",
    "base": "baseline pull",
    "peer": "skopeo+umoci",
    "floor": "floor (dl+sha+gz)",
}


def one_rep(
    reg: RegistryServer,
    work: Path,
    rep: int,
    baseline: Path | None,
    rows: dict[str, list[tuple[float, float, int]]],
) -> None:
    """One round: our pull, the baseline's (if any) and the peer's, in an order that rotates with ``rep``."""
    coco_cmd = [str(ROOT / ".venv/bin/coco-image"), "pull", f"{reg.host}/bench/img:bench",
                "--plain-http", reg.host, "--auth-file", str(reg.authfile)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    skopeo_cmd = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", f"{USER}:{PASSWORD}",
                  f"docker://{reg.host}/bench/img:bench", f"oci:{work}/oci:bench"]  # fmt: skip
    umoci_cmd = ["umoci", "unpack", "--image", f"{work}/oci:bench", str(work / "ubundle")]
    who = ["coco", "peer"] + (["base"] if baseline else [])
    # rotate who goes first, and start each step with no dirty pages of the previous one
    # pending (os.sync, untimed), so write-back lands on its owner
    for name in who[rep % len(who) :] + who[: rep % len(who)]:
        os.sync()
        if name in ("coco", "base"):
            dirs = ["--work-dir", str(work / f"{name}-store"), "--bundle", str(work / f"{name}-bundle")]
            run_env = env | {"PYTHONPATH": str(baseline)} if name == "base" else env
            rows[name].append(measured(coco_cmd + dirs, run_env))
            continue
        s = measured(skopeo_cmd)
        os.sync()
        u = measured(umoci_cmd)
        rows["skopeo"].append(s)
        rows["umoci"].append(u)
        rows["peer"].append((s[0] + u[0], s[1] + u[1], max(s[2], u[2])))
    fw, fc = floor(reg, "bench/img")
    rows["floor"].append((fw, fc, 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=320)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="shm,disk")
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/coco-py-bench"))
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also pull with another checkout's sources (PYTHONPATH, this venv), interleaved")  # fmt: skip
    a = ap.parse_args(argv)
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    a.cache.mkdir(parents=True, exist_ok=True)
    for checkout in [ROOT, *([a.baseline] if a.baseline else [])]:
        byte_compile(checkout)
    t = time.monotonic()
    ref = build_image(a.cache, a.size_mb, a.layers)
    index = json.loads((Path(ref.rsplit(":", 1)[0]) / "index.json").read_text())
    print(
        f"image: {a.size_mb} MB uncompressed, {a.layers} layers (built/cached in {time.monotonic() - t:.1f} s)"
    )
    bases = {"shm": Path("/dev/shm"), "disk": Path("/var/tmp")}
    results: dict[str, dict[str, list[tuple[float, float, int]]]] = {}
    regdir = Path(tempfile.mkdtemp(prefix="bench-reg-"))
    reg = RegistryServer(regdir)
    try:
        reg.push(ref, "bench/img:bench")
        blobs = sum(m.get("size", 0) for m in index["manifests"])
        del blobs
        print(f"registry {reg.host}: pushed")
        for target in a.targets.split(","):
            base = bases[target]
            rows: dict[str, list[tuple[float, float, int]]] = {
                "coco": [],
                "skopeo": [],
                "umoci": [],
                "peer": [],
                "floor": [],
                **({"base": []} if a.baseline else {}),
            }
            for rep in range(a.reps):
                work = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
                try:
                    one_rep(reg, work, rep, a.baseline, rows)
                finally:
                    umount_under(work)
                    shutil.rmtree(work, ignore_errors=True)
                    os.sync()
            results[target] = rows
    finally:
        reg.stop()
        shutil.rmtree(regdir, ignore_errors=True)

    def med(xs: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    def low(xs: list[tuple[float, float, int]], i: int) -> float:
        return min(x[i] for x in xs)

    out: dict[str, object] = {"size_mb": a.size_mb, "layers": a.layers, "reps": a.reps, "targets": {},
                              "floor_inflater": f"zlib-ng {zlib_ng.ZLIBNG_VERSION}",
                              "load_average": os.getloadavg()}  # fmt: skip
    if a.baseline:
        out["baseline"] = str(a.baseline)
    print(f"\n{'target':6} {'what':18} {'wall med':>9} {'wall min':>9} {'cpu med':>8} {'peak RSS MB':>12}")
    for target, rows in results.items():
        tgt: dict[str, object] = {}
        for name in [n for n in ("coco", "base", "skopeo", "umoci", "peer", "floor") if n in rows]:
            w, wmin, c, r = med(rows[name], 0), low(rows[name], 0), med(rows[name], 1), med(rows[name], 2)
            label = LABELS.get(name, name)
            print(f"{target:6} {label:18} {w:9.2f} {wmin:9.2f} {c:8.2f} {r / 1024:12.1f}")
            tgt[name] = {
                "wall_s": w,
                "wall_min_s": wmin,
                "cpu_s": c,
                "peak_rss_mb": r / 1024,
                "runs": rows[name],
            }
        ratio = med(rows["coco"], 0) / med(rows["peer"], 0)
        ratio_min = low(rows["coco"], 0) / low(rows["peer"], 0)
        ratio_cpu = med(rows["coco"], 1) / med(rows["peer"], 1)
        print(
            f"{target:6} coco/(skopeo+umoci): wall median {ratio:.3f}, wall min {ratio_min:.3f}, "
            f"cpu {ratio_cpu:.3f}   (goal <= 0.35); coco/floor: wall median "
            f"{med(rows['coco'], 0) / med(rows['floor'], 0):.2f} (goal <= 1.4)"
        )
        if "base" in rows:
            print(
                f"{target:6} coco/baseline ({a.baseline}): wall median {med(rows['coco'], 0) / med(rows['base'], 0):.3f}, "
                f"cpu median {med(rows['coco'], 1) / med(rows['base'], 1):.3f}"
            )
        print()
        tgt["ratio_wall"] = ratio
        tgt["ratio_wall_min"] = ratio_min
        tgt["ratio_cpu"] = ratio_cpu
        out["targets"][target] = tgt  # type: ignore[index]
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
