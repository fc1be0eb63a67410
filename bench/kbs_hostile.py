"""KBS under a hostile client: /healthz latency while one client sends the
most expensive requests the limits allow, back to back:

* /attest with init-data at ``max_init_data_bytes`` whose ``aa.toml`` holds
  an array just under ``max_claims_items`` (the input that froze the KBS for
  ~20 s before the limits and the linear policy-input conversion), and
* resource GETs against a resource policy that runs up to the policy time
  budget (``numbers.range`` comprehension over the token).

    .venv/bin/python bench/kbs_hostile.py [--seconds 10] [--hostile 2]

Prints /healthz p50 / p99 / max (target: p99 under 50 ms) and what the hostile
clients got. A benchmark, not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbs.config import SecurityConfig
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from tests.support.kbs import start_kbs

EXPENSIVE = """package policy

import rego.v1

default allow := false

allow if {
	input.submods
	count([x | some x in numbers.range(1, 100000000); x > input.iat]) > 0
}
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def heaviest_init_data(limits: SecurityConfig) -> str:
    """init-data just under the size cap, with an aa.toml array just under the element cap."""
    head = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = '
    n = limits.max_claims_items - 16
    while True:
        inner = "a = [" + ",".join("1" for _ in range(n)) + "]\n"
        doc = head + json.dumps(inner) + "\n"
        if len(doc.encode()) <= limits.max_init_data_bytes:
            return doc
        n = n * 9 // 10


async def auth(c: httpx.AsyncClient, url: str) -> tuple[str, str]:
    r = await c.post(f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""})
    c.cookies.clear()
    return r.cookies["kbs-session-id"], r.json()["nonce"]


def attest_body(nonce: str, key: TeeKeyPair, init: str | None) -> bytes:
    jwk = key.public_jwk()
    rd = hash_canonical("sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": jwk})
    body: dict[str, object] = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": sample_evidence(rd), "additional_evidence": ""},
    }
    if init is not None:
        body["init-data"] = {"format": "toml", "body": init}
    return json.dumps(body).encode()


async def hostile(url: str, deadline: float, init: str, token: str, got: dict[str, int]) -> None:
    key = TeeKeyPair.generate()
    async with httpx.AsyncClient(timeout=120) as c:
        while time.monotonic() < deadline:
            sid, nonce = await auth(c, url)
            r = await c.post(f"{url}/kbs/v0/attest", content=attest_body(nonce, key, init),
                             headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
            got[f"attest {r.status_code}"] = got.get(f"attest {r.status_code}", 0) + 1
            r = await c.get(
                f"{url}/kbs/v0/resource/default/key/k1", headers={"Authorization": f"Bearer {token}"}
            )
            got[f"get {r.status_code}"] = got.get(f"get {r.status_code}", 0) + 1


def _hostile_proc(url: str, seconds: float, init: str, token: str, q: Any) -> None:
    got: dict[str, int] = {}
    asyncio.run(hostile(url, time.monotonic() + seconds, init, token, got))
    q.put(got)


async def probe(url: str, deadline: float, lat: list[float]) -> None:
    async with httpx.AsyncClient(timeout=120) as c:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            r = await c.get(f"{url}/healthz")
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200
            await asyncio.sleep(0.01)


async def run(url: str, seconds: float, n_hostile: int, init: str) -> None:
    async with httpx.AsyncClient(timeout=120) as c:  # one token for the policy-heavy GETs
        sid, nonce = await auth(c, url)
        r = await c.post(f"{url}/kbs/v0/attest", content=attest_body(nonce, TeeKeyPair.generate(), None),
                         headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
        token = r.json()["token"]
    base: list[float] = []
    await probe(url, time.monotonic() + 2, base)
    lat: list[float] = []
    # the hostile clients run in their own process, so their client-side work never delays the probe
    ctx = multiprocessing.get_context("fork")
    q: Any = ctx.Queue()
    deadline = time.monotonic() + seconds
    procs = [ctx.Process(target=_hostile_proc, args=(url, seconds, init, token, q)) for _ in range(n_hostile)]
    for p in procs:
        p.start()
    await probe(url, deadline, lat)
    got: dict[str, int] = {}
    for p in procs:
        for k, v in q.get(timeout=300).items():
            got[k] = got.get(k, 0) + v
        p.join(60)
    ms = 1e3
    print(f"idle    /healthz: n={len(base)} p50={pct(base, 50) * ms:.1f} ms p99={pct(base, 99) * ms:.1f} ms")
    print(f"hostile /healthz: n={len(lat)} p50={pct(lat, 50) * ms:.1f} ms p99={pct(lat, 99) * ms:.1f} ms "
          f"max={max(lat) * ms:.1f} ms")  # fmt: skip
    print(f"hostile requests: {dict(sorted(got.items()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hostile", type=int, default=2, help="hostile clients")
    ap.add_argument(
        "--kbs-from", type=Path, metavar="DIR", help="run the KBS of another checkout (before/after)"
    )
    args = ap.parse_args()
    if args.kbs_from is not None:
        from bench.kbs_load import use_kbs_from

        use_kbs_from(args.kbs_from)
    limits = SecurityConfig()
    init = heaviest_init_data(limits)
    print(
        f"init-data {len(init)} bytes (cap {limits.max_init_data_bytes}), policy budget {limits.policy_timeout_s} s"
    )
    with tempfile.TemporaryDirectory() as d, start_kbs(Path(d), policy=EXPENSIVE.encode(),
                                                      resources={"default/key/k1": b"v"}) as kbs:  # fmt: skip
        asyncio.run(run(kbs.url, args.seconds, args.hostile, init))


if __name__ == "__main__":
    main()
