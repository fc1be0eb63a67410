"""The KBS as a fleet: three replicas behind HAProxy on one shared store, under
load and faults, checked for wrong releases and lost writes.

    python -m tests.integration.ha_harness [--store redis|postgres|all] [--seconds 60] [--clients 16]

(``make ha-test``). For each store it starts the store (a real ``redis-server``
or PostgreSQL cluster), three ``kbs`` replicas sharing one EAR signer key,
admin key and at-rest key, and HAProxy round robin in front. Then, for
``--seconds``:

- ``--clients`` RCAR clients loop auth -> attest -> GET resource -> GET gated
  resource through HAProxy, each flow with a fresh TEE key; a failed step is
  retried from a new handshake as CDH does (up to 3 re-attests, backoff);
- one admin writer updates a resource (and writes each value under its own
  key too) and flips the resource policy between allowing and denying the
  gated resource;
- faults: ``kill -9`` of one replica and its restart, a restart of the store,
  and a partition of one replica from the store (a TCP gate that drops its
  connections).

Afterwards, from the clients' and the writer's own records:

- ``wrong_releases``: a resource value that no write had put in the store at
  any time during that GET, a gated value released while every policy that
  could have been in force denied it, or a JWE the client could not open with
  its own TEE key;
- ``lost_writes``: an admin write that got 200 but is not served afterwards;
- ``cross_replica_sessions``: flows whose requests were served by more than
  one replica (from HAProxy's ``X-Served-By``);
- per replica RSS and open fds early in the run and at its end (leaks).

Prints one line per store: ``ha: OK {json}`` or ``ha: FAILED {json}``; exit
status 0 only if every store passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coco_common.b64 import b64url_encode
from kbs_client.rcar import auth_body
from kbs_client.sample import sample_evidence
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.jcs import hash_canonical
from kbs_protocol.policies import builtin_policy
from tests.support.fleet import Fleet, PgStore, RedisServer, StoreServer, proc_fds
from tests.support.postgres import postgres_available
from tests.support.procfs import status_kib

__all__ = ["RunResult", "main", "run_store"]

RES = "default/ha/res"
GATED = "default/ha/gated"
GATED_VALUE = b"gated-" + os.urandom(6).hex().encode()
DENY_GATED = b"""package policy

import rego.v1

default allow := false

allow if {
	data.plugin == "resource"
	data["resource-path"] != ["default", "ha", "gated"]
}
"""
ALLOW = builtin_policy("allow_all")
#: a flow that fails is retried from a new handshake this many more times (CDH re-attests 3 times)
RETRIES = 3
#: failures within this many seconds after a fault ends count as "during the fault"
FAULT_GRACE_S = 5.0
#: growth allowed between the early and the final sample of one replica process
RSS_GROWTH_LIMIT_KIB = 64 * 1024
FD_GROWTH_LIMIT = 24


class _StepError(Exception):
    pass


@dataclass
class Write:
    seq: int
    key: str
    value: bytes
    start: float
    end: float = 0.0
    status: int | None = None  # None: no answer (may or may not have been applied)


@dataclass
class PolicyWrite:
    seq: int
    allows_gated: bool
    start: float
    end: float = 0.0
    status: int | None = None


@dataclass
class Flow:
    client: int
    start: float
    end: float = 0.0
    ok: bool = False
    attempts: int = 0
    served_by: list[str] = field(default_factory=list)
    value: bytes | None = None
    get_window: tuple[float, float] = (0.0, 0.0)
    gated: bytes | None = None
    gated_window: tuple[float, float] = (0.0, 0.0)
    undecryptable: int = 0
    error: str = ""


@dataclass
class RunResult:
    store: str
    ok: bool
    summary: dict[str, Any]


class _Load:
    def __init__(self, fleet: Fleet, seconds: float, clients: int) -> None:
        self.fleet = fleet
        self.seconds = seconds
        self.clients = clients
        self.flows: list[Flow] = []
        self.writes: list[Write] = []
        self.policies: list[PolicyWrite] = []
        self.faults: list[dict[str, Any]] = []
        self.samples: dict[str, dict[str, int]] = {}
        self.t0 = 0.0
        self.deadline = 0.0

    # ------------------------------------------------------------------ clients
    async def _rcar(self, c: httpx.AsyncClient, flow: Flow) -> None:
        key = TeeKeyPair.generate()
        r = await c.post("/kbs/v0/auth", json=auth_body("sample"))
        self._served(flow, r)
        if r.status_code != 200:
            raise _StepError(f"auth {r.status_code}")
        sid = r.cookies.get("kbs-session-id")
        nonce = r.json()["nonce"]
        rd = hash_canonical(
            "sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()}
        )
        body = {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                "tee-evidence": {"primary_evidence": sample_evidence(rd), "additional_evidence": ""}}  # fmt: skip
        cookie = {"Cookie": f"kbs-session-id={sid}"}
        c.cookies.clear()
        r = await c.post("/kbs/v0/attest", content=json.dumps(body).encode(), headers=cookie)
        self._served(flow, r)
        if r.status_code != 200:
            raise _StepError(f"attest {r.status_code}")
        t1 = time.monotonic()
        r = await c.get(f"/kbs/v0/resource/{RES}", headers=cookie)
        t2 = time.monotonic()
        self._served(flow, r)
        if r.status_code != 200:
            raise _StepError(f"resource {r.status_code}")
        value = self._open(key, r, flow)
        t3 = time.monotonic()
        r = await c.get(f"/kbs/v0/resource/{GATED}", headers=cookie)
        t4 = time.monotonic()
        self._served(flow, r)
        if r.status_code == 200:
            flow.gated = self._open(key, r, flow)
        elif r.status_code == 401 and r.json().get("type", "").endswith("PolicyDeny"):
            flow.gated = None
        else:
            raise _StepError(f"gated resource {r.status_code}")
        flow.value, flow.get_window, flow.gated_window = value, (t1, t2), (t3, t4)

    @staticmethod
    def _served(flow: Flow, r: httpx.Response) -> None:
        flow.served_by.append(r.headers.get("x-served-by", "?"))

    @staticmethod
    def _open(key: TeeKeyPair, r: httpx.Response, flow: Flow) -> bytes:
        try:
            return key.decrypt(r.json())
        except Exception as exc:  # a JWE not for this client's key is a wrong release
            flow.undecryptable += 1
            raise _StepError("resource not decryptable with the client's own TEE key") from exc

    async def _client(self, idx: int) -> None:
        async with httpx.AsyncClient(base_url=self.fleet.url, timeout=10) as c:
            while time.monotonic() < self.deadline:
                flow = Flow(idx, time.monotonic())
                for attempt in range(RETRIES + 1):
                    flow.attempts = attempt + 1
                    flow.served_by.clear()
                    try:
                        await self._rcar(c, flow)
                        flow.ok = True
                        break
                    except (httpx.HTTPError, _StepError, ValueError, KeyError) as exc:
                        flow.error = f"{type(exc).__name__}: {exc}"[:160]
                        c.cookies.clear()
                        await asyncio.sleep(0.1 * 2**attempt + random.random() * 0.05)
                flow.end = time.monotonic()
                self.flows.append(flow)

    # ------------------------------------------------------------------- admin
    async def _admin(self, c: httpx.AsyncClient, method: str, path: str, **kw: Any) -> int | None:
        headers = {"Authorization": f"Bearer {self.fleet.admin_token()}"}
        status: int | None = None
        for attempt in range(RETRIES + 1):
            try:
                r = await c.request(method, path, headers=headers, **kw)
                status = r.status_code
                if status < 500:
                    return status
            except httpx.HTTPError:
                status = None
            await asyncio.sleep(0.1 * 2**attempt)
        return status

    async def _writer(self) -> None:
        seq = 0
        async with httpx.AsyncClient(base_url=self.fleet.url, timeout=10) as c:
            while time.monotonic() < self.deadline:
                seq += 1
                value = f"v-{seq:06d}-{os.urandom(4).hex()}".encode()
                own = Write(seq, f"default/ha/w{seq}", value, time.monotonic())
                own.status = await self._admin(c, "POST", f"/kbs/v0/resource/{own.key}", content=value)
                own.end = time.monotonic()
                w = Write(seq, RES, value, time.monotonic())
                w.status = await self._admin(c, "POST", f"/kbs/v0/resource/{RES}", content=value)
                w.end = time.monotonic()
                self.writes += [own, w]
                if seq % 5 == 0:
                    allow = (seq // 5) % 2 == 0
                    p = PolicyWrite(seq, allow, time.monotonic())
                    body = {"policy": b64url_encode(ALLOW if allow else DENY_GATED)}
                    p.status = await self._admin(c, "POST", "/kbs/v0/resource-policy", json=body)
                    p.end = time.monotonic()
                    self.policies.append(p)
                await asyncio.sleep(0.25)

    # ------------------------------------------------------------------ faults
    def _sample(self, label: str) -> None:
        for r in self.fleet.replicas:
            if r.proc is not None and r.proc.poll() is None:
                self.samples.setdefault(r.name, {})[f"rss_{label}_kib"] = status_kib(r.pid, "VmRSS")
                self.samples[r.name][f"fds_{label}"] = proc_fds(r.pid)

    async def _fault(
        self, name: str, begin: Callable[[], None], end: Callable[[], None], hold: float
    ) -> None:
        t = time.monotonic()
        await asyncio.to_thread(begin)
        await asyncio.sleep(hold)
        await asyncio.to_thread(end)
        self.faults.append({"fault": name, "at_s": round(t - self.t0, 1), "until_s":
                            round(time.monotonic() - self.t0, 1), "_start": t, "_end": time.monotonic()})  # fmt: skip

    async def _faults(self) -> None:
        f, d = self.fleet, self.seconds
        victim, cut = f.replicas[0], f.replicas[-1]
        assert f.gate is not None
        await asyncio.sleep(min(5.0, d * 0.1))
        self._sample("early")
        await asyncio.sleep(max(0.0, d * 0.15 - min(5.0, d * 0.1)))

        def restart_victim() -> None:
            victim.start()

        await self._fault(f"kill -9 {victim.name}, restart", victim.kill, restart_victim, d * 0.08)
        await asyncio.sleep(3)
        # the restarted process is new: its leak baseline starts now
        self.samples.pop(victim.name, None)
        if victim.proc is not None and victim.proc.poll() is None:
            self.samples[victim.name] = {"rss_early_kib": status_kib(victim.pid, "VmRSS"),
                                         "fds_early": proc_fds(victim.pid)}  # fmt: skip
        await asyncio.sleep(max(0.0, d * 0.40 - (time.monotonic() - self.t0)))
        store = f.store
        await self._fault(f"restart {store.name}", store.stop, store.start, 1.0)
        await asyncio.sleep(max(0.0, d * 0.65 - (time.monotonic() - self.t0)))
        await self._fault(f"partition {cut.name} from {store.name}", f.gate.cut, f.gate.heal, d * 0.1)

    # ------------------------------------------------------------------- run
    async def run(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.seconds
        tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        tasks.append(asyncio.create_task(self._writer()))
        faults = asyncio.create_task(self._faults())
        await asyncio.gather(*tasks)
        await faults
        await asyncio.sleep(1.0)
        self._sample("end")


def _visible(writes: list[Write], key: str) -> list[tuple[bytes, float, float]]:
    """For each write to ``key``, the window in which its value can be in the store: from its
    start until the end of the next write that was acknowledged (200)."""
    mine = sorted((w for w in writes if w.key == key), key=lambda w: w.seq)
    out = []
    for i, w in enumerate(mine):
        if w.status is not None and w.status != 200:
            continue  # refused: never applied
        until = next((n.end for n in mine[i + 1 :] if n.status == 200), float("inf"))
        out.append((w.value, w.start, until))
    return out


def _policy_may_allow(policies: list[PolicyWrite], seed_allows: bool, window: tuple[float, float]) -> bool:
    s, e = window
    windows = [(seed_allows, float("-inf"),
                next((p.end for p in policies if p.status == 200), float("inf")))]  # fmt: skip
    for i, p in enumerate(policies):
        if p.status is not None and p.status != 200:
            continue
        until = next((n.end for n in policies[i + 1 :] if n.status == 200), float("inf"))
        windows.append((p.allows_gated, p.start, until))
    return any(allows and start <= e and s <= until for allows, start, until in windows)


async def _read_back(fleet: Fleet, keys: list[str]) -> dict[str, bytes | None]:
    """Everything the writer got a 200 for, read back through HAProxy by one attested client."""
    out: dict[str, bytes | None] = {}
    async with httpx.AsyncClient(base_url=fleet.url, timeout=15) as c:
        headers = {"Authorization": f"Bearer {fleet.admin_token()}"}
        r = await c.post("/kbs/v0/resource-policy", json={"policy": b64url_encode(ALLOW)}, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"read-back: policy {r.status_code}")
        key = TeeKeyPair.generate()
        r = await c.post("/kbs/v0/auth", json=auth_body("sample"))
        nonce, sid = r.json()["nonce"], r.cookies["kbs-session-id"]
        rd = hash_canonical(
            "sha384", {"additional-evidence": "", "nonce": nonce, "tee-pubkey": key.public_jwk()}
        )
        body = {"runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                "tee-evidence": {"primary_evidence": sample_evidence(rd), "additional_evidence": ""}}  # fmt: skip
        c.cookies.clear()
        r = await c.post("/kbs/v0/attest", content=json.dumps(body).encode(),
                         headers={"Cookie": f"kbs-session-id={sid}"})  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"read-back: attest {r.status_code}")
        bearer = {"Authorization": f"Bearer {r.json()['token']}"}
        for k in keys:
            r = await c.get(f"/kbs/v0/resource/{k}", headers=bearer)
            out[k] = key.decrypt(r.json()) if r.status_code == 200 else None
    return out


def _check(load: _Load, read_back: dict[str, bytes | None], store: str) -> RunResult:
    flows = load.flows
    wrong: list[str] = []
    res_vis = _visible(load.writes, RES)
    for fl in flows:
        if fl.undecryptable:
            wrong.append(f"client {fl.client}: {fl.undecryptable} JWE(s) not for its own key")
        if not fl.ok:
            continue
        s, e = fl.get_window
        if not any(v == fl.value and start <= e and s <= until for v, start, until in res_vis):
            wrong.append(f"client {fl.client}: value {fl.value!r} was not in the store during its GET")
        if fl.gated is not None:
            if fl.gated != GATED_VALUE:
                wrong.append(f"client {fl.client}: gated value {fl.gated!r} was never stored")
            elif not _policy_may_allow(load.policies, True, fl.gated_window):
                wrong.append(f"client {fl.client}: gated resource released while the policy denied it")
    acked = [w for w in load.writes if w.key != RES and w.status == 200]
    lost = [w.key for w in acked if read_back.get(w.key) != w.value]
    res_writes = [w for w in load.writes if w.key == RES]
    last_acked = max((w.seq for w in res_writes if w.status == 200), default=0)
    possible_final = {w.value for w in res_writes if w.seq >= last_acked and w.status in (200, None)}
    if last_acked and read_back.get(RES) not in possible_final:
        lost.append(RES)
    windows = [(f["_start"], f["_end"] + FAULT_GRACE_S) for f in load.faults]
    failed = [fl for fl in flows if not fl.ok]
    during = [fl for fl in failed if any(fl.start <= e and s <= fl.end for s, e in windows)]
    lat = sorted((fl.end - fl.start) * 1000 for fl in flows if fl.ok)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None
    cross = sum(1 for fl in flows if fl.ok and len(set(fl.served_by) - {"?"}) > 1)
    leaks = []
    for name, smp in sorted(load.samples.items()):
        if {"rss_early_kib", "rss_end_kib"} <= smp.keys():
            if smp["rss_end_kib"] - smp["rss_early_kib"] > RSS_GROWTH_LIMIT_KIB:
                leaks.append(f"{name} RSS +{(smp['rss_end_kib'] - smp['rss_early_kib']) // 1024} MiB")
            if smp["fds_end"] - smp["fds_early"] > FD_GROWTH_LIMIT:
                leaks.append(f"{name} fds +{smp['fds_end'] - smp['fds_early']}")
        else:
            leaks.append(f"{name}: not sampled at start and end")
    summary: dict[str, Any] = {
        "store": store,
        "seconds": load.seconds,
        "clients": load.clients,
        "flows": len(flows),
        "flows_ok": len(flows) - len(failed),
        "flows_failed": len(failed),
        "failed_during_faults": len(during),
        "failed_outside_faults": len(failed) - len(during),
        "retried_flows": sum(1 for fl in flows if fl.ok and fl.attempts > 1),
        "flows_per_s": round(len(flows) / load.seconds, 1),
        "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "p99_ms": round(p99, 1) if p99 is not None else None,
        "cross_replica_sessions": cross,
        "gated_released": sum(1 for fl in flows if fl.gated is not None),
        "gated_denied": sum(1 for fl in flows if fl.ok and fl.gated is None),
        "admin_writes": len(load.writes) // 2,
        "admin_writes_acked": len(acked),
        "policy_flips": len(load.policies),
        "faults": [{k: v for k, v in f.items() if not k.startswith("_")} for f in load.faults],
        "wrong_releases": len(wrong),
        "lost_writes": len(lost),
        "leaks": leaks,
        "replicas": load.samples,
    }
    if wrong:
        summary["wrong_examples"] = wrong[:5]
    if lost:
        summary["lost_examples"] = lost[:5]
    if failed:
        summary["failure_examples"] = sorted({fl.error for fl in failed})[:5]
    ok = (not wrong and not lost and not leaks and len(failed) == len(during) and cross > 0
          and len(flows) > 0 and len(load.faults) == 3)  # fmt: skip
    return RunResult(store, ok, summary)


def _store(kind: str, workdir: Path) -> StoreServer:
    if kind == "redis":
        return RedisServer(workdir / "redis")
    return PgStore(workdir / "postgres")


def run_store(kind: str, workdir: Path, *, seconds: float, clients: int) -> RunResult:
    fleet = Fleet(workdir / kind, _store(kind, workdir))
    try:
        fleet.start()
        token = fleet.admin_token()
        with httpx.Client(base_url=fleet.url, timeout=15,
                          headers={"Authorization": f"Bearer {token}"}) as c:  # fmt: skip
            for path, body in (
                (f"/kbs/v0/resource/{GATED}", GATED_VALUE),
                (f"/kbs/v0/resource/{RES}", b"seed"),
            ):
                if c.post(path, content=body).status_code != 200:
                    raise RuntimeError(f"seeding {path} failed")
            if c.post("/kbs/v0/resource-policy", json={"policy": b64url_encode(ALLOW)}).status_code != 200:
                raise RuntimeError("setting the resource policy failed")
        load = _Load(fleet, seconds, clients)
        load.writes.append(Write(0, RES, b"seed", 0.0, 0.0, 200))
        asyncio.run(load.run())
        read_back = asyncio.run(_read_back(fleet, [w.key for w in load.writes if w.key != RES] + [RES]))
        return _check(load, read_back, kind)
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ha-test", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--store", choices=("redis", "postgres", "all"), default="all")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    kinds = ["redis", "postgres"] if args.store == "all" else [args.store]
    if "postgres" in kinds and not postgres_available():
        print('ha: FAILED {"error": "PostgreSQL server binaries not installed"}')
        return 1
    ok = True
    with tempfile.TemporaryDirectory(prefix="coco-ha-") as tmp:
        base = args.workdir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)  # the PostgreSQL server runs as user postgres
        for kind in kinds:
            try:
                result = run_store(kind, base, seconds=args.seconds, clients=args.clients)
            except Exception as exc:
                print(f"ha: FAILED {json.dumps({'store': kind, 'error': f'{type(exc).__name__}: {exc}'})}")
                ok = False
                continue
            ok &= result.ok
            print(
                f"ha: {'OK' if result.ok else 'FAILED'} {json.dumps(result.summary, default=str)}", flush=True
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
