"""Layer unpack: ``image_pull.unpack.unpack_layer`` against GNU tar on the same layer and filesystem.

Generates a source tree (``--files`` files in nested directories: mostly
small files, some medium and large, plus symlinks and hardlinks; contents
half random, half text so gzip behaves like on real images), packs it once
with GNU tar (``--format=pax --numeric-owner``), gzips it, then for each
target filesystem (tmpfs ``/dev/shm`` and disk ``/var/tmp``) measures,
``--reps`` times each into a fresh directory:

* GNU ``tar -xf`` / ``tar -xzf`` (as root tar restores owners and modes too),
* ``umoci raw unpack`` (gzip only: umoci stores the layer gzipped; all three
  tools then read that same blob), when umoci is installed,
* our ``unpack_layer(open_decompressed(..., threaded=True))``, in its own
  process, timed around the call (interpreter start-up excluded).

Reports medians of wall time, files/s, MB/s (uncompressed tar bytes), CPU
(user+sys of the process, ours including interpreter start-up) and peak RSS
(GNU time for tar when installed; VmHWM for ours), and the ratio ours / GNU
tar. Usage:

    .venv/bin/python bench/unpack_vs_tar.py [--files 20000] [--reps 3] [--targets shm,disk]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"shm": "/dev/shm", "disk": "/var/tmp"}

OURS = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from image_pull.unpack import open_decompressed, unpack_layer
with open(sys.argv[1], "rb") as raw:
    t = time.monotonic()
    with open_decompressed(raw, threaded=True) as layer:
        stats = unpack_layer(layer, Path(sys.argv[2]))
    wall = time.monotonic() - t
from tests.support.procfs import status_kib
print(wall, stats.entries, status_kib("self", "VmHWM"))
"""
TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def make_tree(src: Path, files: int, seed: int = 7) -> tuple[int, int]:
    rng = random.Random(seed)
    text = b"the quick brown fox jumps over the lazy dog 0123456789\n" * 64
    made = 0
    total = 0
    dirs = [src]
    src.mkdir(parents=True)
    regular: list[Path] = []
    while made < files:
        if made % 20 == 0:
            parent = rng.choice(dirs[-50:])
            d = parent / f"d{len(dirs)}"
            d.mkdir()
            dirs.append(d)
        d = dirs[-1] if rng.random() < 0.7 else rng.choice(dirs)
        r = rng.random()
        p = d / f"f{made}"
        if r < 0.04 and regular:
            p.symlink_to(os.path.relpath(rng.choice(regular), d))
        elif r < 0.05 and regular:
            os.link(rng.choice(regular), p)
        else:
            u = rng.random()
            size = (
                rng.randint(0, 4096)
                if u < 0.7
                else rng.randint(4096, 32768)
                if u < 0.95
                else rng.randint(65536, 262144)
            )
            half = size // 2
            data = rng.randbytes(half) + (text * (size // len(text) + 1))[: size - half]
            p.write_bytes(data)
            os.chmod(p, rng.choice([0o644, 0o755, 0o600, 0o4755]))
            regular.append(p)
            total += size
        made += 1
    return made + len(dirs), total


def run_timed(argv: list[str]) -> tuple[float, float, str, str]:
    """(wall s, cpu s, stdout, stderr) of one child process.

    Peak RSS does not come from wait4: ru_maxrss survives execve, so a child forked
    from this Python process reports at least our own RSS. GNU time (tar) and the
    child's own VmHWM (ours) give the real figure.
    """
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"{argv[0]} failed: {err[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, out, err


def _peak(err: str) -> float:
    marks = [x for x in err.split() if x.startswith("maxrss=")]
    return int(marks[-1][7:]) / 1024 if marks else float("nan")


def measure(
    tool: str, codec: str, layer: Path, dest: Path, layout: Path | None
) -> tuple[float, float, float]:
    """(wall s, cpu s, peak RSS MiB) of one unpack of ``layer`` into ``dest``."""
    timer = [TIME, "-f", "maxrss=%M"] if TIME else []
    if tool == "gnu-tar":
        wall, cpu, _, err = run_timed(
            [*timer, "tar", "-xzf" if codec == "gzip" else "-xf", str(layer), "-C", str(dest)]
        )
        return wall, cpu, _peak(err)
    if tool == "umoci":
        assert layout is not None
        wall, cpu, _, err = run_timed(
            [*timer, "umoci", "raw", "unpack", "--image", f"{layout}:t", str(dest / "rootfs")]
        )
        return wall, cpu, _peak(err)
    _, cpu, out, _ = run_timed([sys.executable, "-c", OURS, str(layer), str(dest), str(ROOT)])
    wall_s, _entries, hwm_kb = out.split()
    return float(wall_s), cpu, int(hwm_kb) / 1024  # wall: the call itself, not interpreter start


def umoci_layout(work: Path, layer: Path) -> tuple[Path, Path] | None:
    """An OCI layout holding ``layer`` (gzipped by umoci itself) and that blob's path."""
    if shutil.which("umoci") is None:
        return None
    layout = work / "oci"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True, capture_output=True)
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:t", str(layer)], check=True, capture_output=True
    )
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return layout, layout / "blobs/sha256" / manifest["layers"][-1]["digest"][7:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="shm,disk")
    ap.add_argument("--json", type=Path, help="write the medians here too")
    args = ap.parse_args()
    out: dict[str, object] = {"files": args.files, "reps": args.reps, "rows": []}
    if shutil.which("tar") is None:
        print("GNU tar not found; nothing to compare with")
        return 1
    work = Path(tempfile.mkdtemp(prefix="unpack-bench-", dir="/var/tmp"))
    try:
        src = work / "src"
        t = time.monotonic()
        entries, data_bytes = make_tree(src, args.files)
        layer = work / "layer.tar"
        pack = [
            "tar",
            "-C",
            str(src),
            "--format=pax",
            "--numeric-owner",
            "--sort=name",
            "-cf",
            str(layer),
            ".",
        ]
        subprocess.run(pack, check=True)
        shutil.rmtree(src)
        oci = umoci_layout(work, layer)
        if oci is None:
            subprocess.run(["gzip", "-k", "-6", str(layer)], check=True)
            gz = Path(str(layer) + ".gz")
        else:
            gz = oci[1]
        tar_mb = layer.stat().st_size / 1e6
        out["entries"] = entries
        print(
            f"layer: {entries} entries, {data_bytes / 1e6:.1f} MB file data, tar {tar_mb:.1f} MB, "
            f"gzip {gz.stat().st_size / 1e6:.1f} MB (built in {time.monotonic() - t:.1f}s); "
            f"reps={args.reps}, medians; umoci {'raw unpack on the same gzip blob' if oci else 'not installed'}"
        )
        print(
            f"{'target':6} {'codec':5} {'tool':8} {'wall s':>7} {'files/s':>9} {'MB/s':>7} {'cpu s':>6} {'RSS MB':>7}"
        )
        for tname in args.targets.split(","):
            base = Path(TARGETS[tname]) / f"unpack-bench-{os.getpid()}"
            base.mkdir(parents=True)
            try:
                for codec, blob in (("plain", layer), ("gzip", gz)):
                    staged = base / blob.name
                    shutil.copyfile(blob, staged)
                    layout = None
                    tools = ["gnu-tar", "ours"]
                    if codec == "gzip" and oci is not None:
                        layout = base / "oci"
                        shutil.copytree(oci[0], layout)
                        tools.append("umoci")
                    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in tools}
                    for rep in range(args.reps):
                        for tool in tools:
                            dest = base / f"{tool}-{rep}"
                            dest.mkdir()
                            results[tool].append(measure(tool, codec, staged, dest, layout))
                            shutil.rmtree(dest)
                    med = {
                        k: tuple(statistics.median(x[i] for x in v) for i in range(3))
                        for k, v in results.items()
                    }
                    for tool, (wall, cpu, rss) in med.items():
                        print(
                            f"{tname:6} {codec:5} {tool:8} {wall:7.2f} {entries / wall:9.0f} {tar_mb / wall:7.1f} "
                            f"{cpu:6.2f} {rss:7.1f}"
                        )
                    line = f"{tname:6} {codec:5} ours/tar = {med['ours'][0] / med['gnu-tar'][0]:.2f}x wall"
                    line += f", {med['ours'][1] / med['gnu-tar'][1]:.2f}x cpu"
                    if "umoci" in med:
                        line += f"; ours/umoci = {med['ours'][0] / med['umoci'][0]:.2f}x wall"
                        line += f", {med['ours'][1] / med['umoci'][1]:.2f}x cpu"
                    print(line)
                    out["rows"].append(  # type: ignore[attr-defined]
                        {"target": tname, "codec": codec,
                         **{tool: {"wall_s": w, "cpu_s": c, "rss_mb": r} for tool, (w, c, r) in med.items()},
                         "ratio_wall": med["ours"][0] / med["gnu-tar"][0],
                         "ratio_cpu": med["ours"][1] / med["gnu-tar"][1]}
                    )  # fmt: skip
                    staged.unlink()
                    if layout is not None:
                        shutil.rmtree(layout)
            finally:
                shutil.rmtree(base, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
