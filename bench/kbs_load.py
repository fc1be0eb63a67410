"""KBS load benchmark: concurrent sample-attester clients doing
auth -> attest -> resource, next to a plain HTTP round trip (GET /healthz)
on the same server in the same run.

The clients are ``bench/kbs_loadgen`` (Go, standard library only), built on
first use: a Python client costs ~4.5 ms of CPU per flow on the same two
cores, more than the KBS itself, so it capped the figure. Each Go client runs
the real protocol over one keep-alive connection: /auth, nonce-bound sample
evidence (report data = H(JCS(runtime data)) with its own nonce) and its own
EC P-256 TEE key to /attest, then the resource GET with the token, and it
decrypts every JWE answer (ECDH-ES+A256KW / A256GCM) and compares it with the
stored value. Without ``go`` (or with ``--client python``) the Python client
(kbs_client) runs instead, in this process.

KBS CPU is read from /proc: the KBS process alone, and with its descendants
(the forkserver and the policy workers, where Rego runs); the load
generator's CPU is reported separately. The KBS logs at its default level
(info: one audit line per released resource), as deployed.

    .venv/bin/python bench/kbs_load.py [--clients 16] [--seconds 10] [--storage Memory|LocalFs]
                                       [--client go|python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_client.sample import SampleEvidenceSource
from kbs_client.tee_key import TeeKeyPair
from tests.support.kbs import start_kbs


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """cpu_s of a process and all its descendants alive now (the KBS, its forkserver and its
    policy workers: the Rego evaluations run there)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_s(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


async def worker(url: str, deadline: float, lat: list[float], kind: str, keys: list[TeeKeyPair]) -> None:
    src = SampleEvidenceSource()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=4)) as http:
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if kind == "plain":
                r = await http.get(url + "/healthz")
                assert r.status_code == 200
            else:
                key = keys[i % len(keys)]
                att = await attest(http, url, src, key=key, attempts=1)
                data = await get_resource(http, url, "default/bench/secret", token=att.token, key=key)
                assert data == b"bench-secret"
            lat.append(time.perf_counter() - t0)
            i += 1


async def phase(
    url: str, kind: str, clients: int, seconds: float, keys: list[TeeKeyPair]
) -> tuple[float, float, float, int]:
    lat: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(worker(url, deadline, lat, kind, keys) for _ in range(clients)))
    dt = time.perf_counter() - t0
    return len(lat) / dt, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, len(lat)


GEN_SRC = Path(__file__).resolve().parent / "kbs_loadgen"


def build_loadgen(out: Path) -> Path | None:
    """``bench/kbs_loadgen`` built into ``out`` (standard library only, no network); None without go."""
    go = shutil.which("go")
    if go is None:
        return None
    env = {**os.environ, "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
    exe = out / "kbs_loadgen"
    subprocess.run([go, "build", "-o", str(exe), "."], cwd=GEN_SRC, env=env, check=True, timeout=600)
    return exe


def go_phase(
    exe: Path, url: str, kind: str, clients: int, seconds: float
) -> tuple[float, float, float, int, float]:
    """(rate, p50 ms, p99 ms, n, generator CPU s) of one run of the Go load generator."""
    p = subprocess.run([str(exe), "-url", url, "-mode", kind, "-clients", str(clients), "-seconds", str(seconds),
                        "-warmup", "1"], capture_output=True, text=True, timeout=seconds + 300)  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"kbs_loadgen failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-1500:]}")
    d = json.loads(p.stdout)
    return d["rps"], d["p50_ms"], d["p99_ms"], d["n"], d["client_cpu_s"]


def py_phase(
    url: str, kind: str, clients: int, seconds: float, keys: list[TeeKeyPair]
) -> tuple[float, float, float, int, float]:
    k0 = time.process_time()
    r = asyncio.run(phase(url, kind, clients, seconds, keys))
    return (*r, time.process_time() - k0)


def use_kbs_from(checkout: Path) -> None:
    """Make start_kbs run the KBS of another checkout (its packages first on sys.path, this venv,
    started in that directory): before/after in one sitting, against the same load generator."""
    import tests.support.kbs as support

    # from there, so its forkserver (Python 3.11 ignores the sys.path handed to it) preloads that
    # checkout's policy modules too
    where = str(checkout.resolve())
    boot = f"import os, sys; os.chdir({where!r}); sys.path.insert(0, {where!r}); from kbs.cli import main; sys.exit(main())"
    support._kbs_cmd = lambda: [sys.executable, "-c", boot]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--storage", default="Memory", choices=["Memory", "LocalFs"])
    ap.add_argument("--client", choices=["go", "python"], default="go",
                    help="load generator: bench/kbs_loadgen (Go; python when go is missing) or kbs_client")  # fmt: skip
    ap.add_argument("--kbs-from", type=Path, metavar="DIR",
                    help="run the KBS of another checkout (its packages first on sys.path): before/after")  # fmt: skip
    ap.add_argument("--resource-policy", type=Path, metavar="REGO",
                    help="this resource policy instead of the built-in allow_all (which the KBS decides "
                         "without a policy worker; any other text is evaluated by one)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    if args.kbs_from is not None:
        use_kbs_from(args.kbs_from)
    keys = [TeeKeyPair.generate() for _ in range(32)]  # key generation is the client's cost, not the KBS's
    policy = args.resource_policy.read_bytes() if args.resource_policy else "allow_all"
    with tempfile.TemporaryDirectory() as d, start_kbs(Path(d), storage=args.storage, policy=policy,
                                                       resources={"default/bench/secret": b"bench-secret"}) as kbs:  # fmt: skip
        assert kbs.proc is not None
        pid = kbs.proc.pid
        exe = build_loadgen(Path(d)) if args.client == "go" else None
        gen = "go" if exe is not None else "python"

        def run(kind: str, seconds: float) -> tuple[float, float, float, int, float]:
            if exe is not None:
                return go_phase(exe, kbs.url, kind, args.clients, seconds)
            return py_phase(kbs.url, kind, args.clients, seconds, keys)

        # warm-up: the forkserver and policy workers start on first use, not inside a measurement
        asyncio.run(phase(kbs.url, "flow", min(args.clients, 4), 1.0, keys))
        c0 = cpu_s(pid)
        plain = run("plain", args.seconds / 2)
        c1, t1 = cpu_s(pid), tree_cpu_s(pid)
        flows = run("flow", args.seconds)
        c2, t2 = cpu_s(pid), tree_cpu_s(pid)
    load = os.getloadavg()[0]
    print(
        f"kbs_load: storage={args.storage} clients={args.clients} generator={gen} "
        f"kbs={args.kbs_from or 'this checkout'} (one KBS process, loopback, "
        f"{os.cpu_count()} CPUs, load average {load:.2f})"
    )
    print(
        f"  plain HTTP GET /healthz : {plain[0]:8.1f} req/s   p50 {plain[1]:7.2f} ms   p99 {plain[2]:7.2f} ms   n={plain[3]}"
    )
    print(
        f"  auth->attest->resource  : {flows[0]:8.1f} flow/s  p50 {flows[1]:7.2f} ms   p99 {flows[2]:7.2f} ms   n={flows[3]}"
    )
    print(f"  ratio: one flow costs {plain[0] / flows[0]:.1f}x a plain round trip (3 requests per flow)")
    flow_cpu, flow_tree = (c2 - c1) / flows[3] * 1e3, (t2 - t1) / flows[3] * 1e3
    print(
        f"  KBS CPU: {(c1 - c0) / plain[3] * 1e3:.2f} ms per plain request, {flow_cpu:.2f} ms per flow in the KBS "
        f"process, {flow_tree:.2f} ms with its policy workers (client runs on the same machine)"
    )
    client = flows[4] / flows[3] * 1e3
    print(
        f"  load generator ({gen}) CPU: {client:.2f} ms per flow"
        + (", every resource JWE decrypted and compared" if gen == "go" else " (one process)")
    )
    if args.json:
        doc = {
            "clients": args.clients,
            "generator": gen,
            "load_average": load,
            "storage": args.storage,
            "plain": {"rps": plain[0], "p50_ms": plain[1], "p99_ms": plain[2], "n": plain[3],
                      "kbs_cpu_ms": (c1 - c0) / plain[3] * 1e3},
            "flow": {"rps": flows[0], "p50_ms": flows[1], "p99_ms": flows[2], "n": flows[3],
                     "kbs_cpu_ms": flow_cpu, "kbs_tree_cpu_ms": flow_tree, "client_cpu_ms": client},
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
