"""Guest footprint: what the confidential guest carries, and what its daemons cost at rest.

Measured on the built wheel installed the way a guest image installs it: a
fresh venv with the hash-checked guest lock (``requirements/guest.lock.txt``) and
the wheel with ``--no-deps``, so nothing from the checkout or the server set
is on the path.

* installed size of that venv's ``site-packages`` (and, for scale, the same
  for the server lock, ``requirements/server.lock.txt``);
* attestation-agent and confidential-data-hub: time from exec to the ttRPC
  Unix socket accepting a connection (median of ``--reps`` starts), the CPU
  time the process used until then (all threads, from ``/proc/PID/task/*/schedstat``:
  on a shared machine this moves far less with the load than the wall time),
  and the resident set (VmRSS) after ``--idle`` seconds idle. Each daemon is
  started once, unmeasured, before the measured starts, with bytecode writing
  allowed, so its modules run from ``__pycache__`` as in an installed guest;
* one ``coco-image pull`` of a ``--size-mb`` image (4 layers, half random, half
  text) from a local docker-registry into a bundle: the process's peak RSS
  (``ru_maxrss``) and wall time.

The peer is the same process doing nothing useful: a bare ``python3 -c`` that
opens a Unix socket, for the start-up and RSS floor of any Python daemon.
Prints one JSON document. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from tests.support.aa import ttrpc_call  # noqa: E402
from tests.support.procfs import status_kib  # noqa: E402
from tests.support.registry import RegistryServer, layer_tar, umoci_image  # noqa: E402


def _sh(args: list[str], **kw: object) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _venv(dest: Path, lock: str, wheel: Path) -> Path:
    _sh([sys.executable, "-m", "venv", str(dest)])
    pip = [str(dest / "bin" / "pip"), "install", "-q"]
    _sh([*pip, "--require-hashes", "--only-binary", ":all:", "-r", str(ROOT / "requirements" / lock)])
    _sh([*pip, "--no-deps", str(wheel)])
    (site,) = (dest / "lib").glob("python3*/site-packages")
    return site


def _site_size(site: Path) -> dict[str, object]:
    dists = sorted(p.name.split("-")[0] for p in site.glob("*.dist-info"))
    skip = {"pip", "setuptools"}
    size = sum(_du(p) for p in site.iterdir() if p.name.split("-")[0].lower() not in skip)
    return {
        "mib": round(size / (1 << 20), 1),
        "distributions": len([d for d in dists if d.lower() not in skip]),
    }


def _ready(path: Path, proc: subprocess.Popen[bytes], limit: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} before its socket was ready")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return time.monotonic()
                except OSError:
                    pass
        time.sleep(0.002)
    raise RuntimeError(f"{path} not ready after {limit}s")


def _cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds on a CPU)."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9


#: the daemons may write bytecode (a guest's wheel install has it compiled)
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


#: one real call per daemon for the "after its first call" figure: both load the
#: server, protobuf and the service (AA answers GetTeeType; CDH refuses a malformed
#: sealed secret without any network)
_FIRST_CALL = {
    "attestation-agent": ("attestation_agent.AttestationAgentService", "GetTeeType", b""),
    "confidential-data-hub": ("api.SealedSecretService", "UnsealSecret", b"\x0a\x03bad"),
}


def _daemon(
    args: list[str], sock: Path, idle: float, log: Path, call: tuple[str, str, bytes] | None = None
) -> tuple[float, float, int, int, float]:
    """exec -> ready (s), CPU to ready (s), VmRSS after ``idle`` s (KiB), VmRSS
    ``idle`` s after one ``call`` (KiB) and that call's wall time (s; 0 without one)."""
    sock.unlink(missing_ok=True)
    t0 = time.monotonic()
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=_ENV)
    try:
        t1 = _ready(sock, proc)
        cpu = _cpu_s(proc.pid)
        time.sleep(idle)
        rss = status_kib(proc.pid, "VmRSS")
        after, call_s = 0, 0.0
        if call is not None:
            t2 = time.monotonic()
            ttrpc_call(sock, *call, timeout=30)
            call_s = time.monotonic() - t2
            time.sleep(idle)
            after = status_kib(proc.pid, "VmRSS")
        return t1 - t0, cpu, rss, after, call_s
    finally:
        proc.terminate()
        proc.wait(10)


def _summary(rows: list[tuple[float, float, int, int, float]]) -> dict[str, object]:
    med = statistics.median
    out: dict[str, object] = {
        "exec_to_socket_ready_ms": round(med(r[0] for r in rows) * 1000, 1),
        "exec_to_socket_ready_ms_min_max": [round(min(r[0] for r in rows) * 1000, 1), round(max(r[0] for r in rows) * 1000, 1)],
        "cpu_ms_to_socket_ready": round(med(r[1] for r in rows) * 1000, 1),
        "idle_rss_mib": round(med(r[2] for r in rows) / 1024, 1),
        "idle_rss_mib_min_max": [round(min(r[2] for r in rows) / 1024, 1), round(max(r[2] for r in rows) / 1024, 1)],
    }  # fmt: skip
    if rows[0][3]:
        out["rss_after_first_call_mib"] = round(med(r[3] for r in rows) / 1024, 1)
        out["first_call_ms"] = round(med(r[4] for r in rows) * 1000, 1)
    return out


def _measure(bins: dict[str, Path], tmp: Path, reps: int, idle: float) -> dict[str, dict[str, object]]:
    """The floor and both daemons from each ``bins`` entry (label -> a venv's bin/),
    interleaved: every repetition starts each one once, in turn."""
    aa_sock, cdh_sock, floor_sock = tmp / "aa.sock", tmp / "cdh.sock", tmp / "floor.sock"
    (tmp / "aa.toml").write_text('[token_configs.kbs]\nurl = "http://127.0.0.1:9"\n')
    (tmp / "cdh.toml").write_text(
        f'socket = "unix://{cdh_sock}"\n[aa]\naa_socket = "unix://{aa_sock}"\n'
        '[kbc]\nname = "cc_kbc"\nurl = "http://127.0.0.1:9"\n'
        f'[image]\nwork_dir = "{tmp / "image-work"}"\n'
    )
    log = tmp / "daemons.log"
    first = next(iter(bins.values()))
    floor = [str(first / "python"), "-c",
             "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(3600)",
             str(floor_sock)]  # fmt: skip
    aa = {k: [str(b / "attestation-agent"), "--attestation_sock", f"unix://{aa_sock}", "-c", str(tmp / "aa.toml")]
          for k, b in bins.items()}  # fmt: skip
    cdh = {k: [str(b / "confidential-data-hub"), "-c", str(tmp / "cdh.toml")] for k, b in bins.items()}
    runs: dict[str, list[tuple[float, float, int, int, float]]] = {"floor": []}
    for k in bins:
        _daemon(aa[k], aa_sock, 0, log)  # warm-up: bytecode caches, page cache
    for _ in range(reps):
        runs["floor"].append(_daemon(floor, floor_sock, idle, log))
        for k in bins:
            runs.setdefault(f"{k}attestation-agent", []).append(
                _daemon(aa[k], aa_sock, idle, log, _FIRST_CALL["attestation-agent"])
            )
    with log.open("ab") as aa_log:  # the CDH's AA: the first label's
        aa_proc = subprocess.Popen(aa[next(iter(bins))], stdout=aa_log, stderr=subprocess.STDOUT, env=_ENV)
    try:
        _ready(aa_sock, aa_proc)
        for k in bins:
            _daemon(cdh[k], cdh_sock, 0, log)  # warm-up
        for _ in range(reps):
            for k in bins:
                runs.setdefault(f"{k}confidential-data-hub", []).append(
                    _daemon(cdh[k], cdh_sock, idle, log, _FIRST_CALL["confidential-data-hub"])
                )
    finally:
        aa_proc.terminate()
        aa_proc.wait(10)
    return {name: _summary(rows) for name, rows in runs.items()}


# ru_maxrss survives execve, so a child forked from this (large) process would
# report this process's size; a small launcher forks the pull and reports its rusage.
_LAUNCH = """
import json, os, subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, ru = os.wait4(p.pid, 0)
err = p.stderr.read().decode(errors="replace")[-400:] if p.stderr else ""
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.monotonic() - t0,
                  "maxrss_kib": ru.ru_maxrss, "err": err}))
"""


def _pull(py: str, coco: str, reg: RegistryServer, ref: str, work: Path) -> tuple[float, int]:
    args = [coco, "pull", f"{reg.host}/{ref}", "--plain-http", reg.host, "--auth-file", str(reg.authfile),
            "--work-dir", str(work / "store"), "--bundle", str(work / "bundle")]  # fmt: skip
    out = json.loads(subprocess.run([py, "-c", _LAUNCH, *args], capture_output=True, check=True).stdout)
    subprocess.run(["umount", "-R", str(work / "bundle" / "rootfs")], capture_output=True)
    if out["rc"]:
        raise RuntimeError(f"coco-image pull failed: {out['err']}")
    return float(out["wall"]), int(out["maxrss_kib"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="starts of each daemon (median reported)")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS")
    ap.add_argument("--size-mb", type=int, default=64, help="uncompressed size of the pulled image")
    ap.add_argument("--checkout", action="store_true",
                    help="daemons only, from this checkout's .venv (no wheel, no fresh venvs, no pull)")  # fmt: skip
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="with --checkout: also start the daemons of another checkout (its .venv), "
                         "interleaved with this one's, for a before/after in one run")  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the JSON document here too")
    a = ap.parse_args()
    if a.baseline and not a.checkout:
        ap.error("--baseline compares checkouts: use it with --checkout")
    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-", dir="/var/tmp"))
    try:
        out: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
        if a.checkout:
            bin_ = ROOT / ".venv" / "bin"
        else:
            _sh([sys.executable, "-m", "build", "--no-isolation", "--wheel", "-o", str(tmp / "dist"), str(ROOT)],
                stderr=subprocess.DEVNULL)  # fmt: skip
            (wheel,) = (tmp / "dist").glob("coco_py-*.whl")
            guest_site = _venv(tmp / "guest", "guest.lock.txt", wheel)
            server_site = _venv(tmp / "server", "server.lock.txt", wheel)
            out["installed"] = {
                "guest": _site_size(guest_site),
                "server_set_for_scale": _site_size(server_site),
            }
            bin_ = tmp / "guest" / "bin"
        bins = {"": bin_}
        if a.baseline:
            bins["baseline "] = a.baseline.resolve() / ".venv" / "bin"
        measured = _measure(bins, tmp, a.reps, a.idle)
        out["daemons"] = {k: v for k, v in measured.items() if not k.startswith("baseline ")}
        if a.baseline:
            out["baseline"] = {"checkout": str(a.baseline)} | {
                k.removeprefix("baseline "): v for k, v in measured.items() if k.startswith("baseline ")
            }

        if a.checkout:
            print(json.dumps(out, indent=2))
            if a.json:
                a.json.write_text(json.dumps(out, indent=2))
            return 0
        reg = RegistryServer(tmp / "reg")
        try:
            rnd = random.Random(7)
            per = a.size_mb * (1 << 20) // 4
            layers = []
            for i in range(4):
                words = [b"alpha", b"beta", b"layer", b"digest", b"python"]
                text = b" ".join(rnd.choice(words) for _ in range(per // 12))[: per // 2]
                layers.append(
                    layer_tar([(f"d{i}", "dir", None, 0o755), (f"d{i}/text", "file", text, 0o644),
                               (f"d{i}/rand", "file", rnd.randbytes(per // 2), 0o644)])
                )  # fmt: skip
            reg.push(umoci_image(tmp, "img", layers), "footprint/img:1")
            wall, peak = _pull(
                str(bin_ / "python"), str(bin_ / "coco-image"), reg, "footprint/img:1", tmp / "pull"
            )
            out["pull"] = {
                "image_mib": a.size_mb,
                "layers": 4,
                "wall_s": round(wall, 2),
                "peak_rss_mib": round(peak / 1024, 1),
            }
        finally:
            reg.stop()
        print(json.dumps(out, indent=2))
        if a.json:
            a.json.write_text(json.dumps(out, indent=2))
        return 0
    finally:
        subprocess.run(["umount", "-R", str(tmp / "pull" / "bundle" / "rootfs")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
