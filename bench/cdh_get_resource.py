"""GetResource latency: one reused KBS token vs. re-attestation per call.

Starts the reference ``kbs``, the ``attestation-agent`` (sample attester) and
``confidential-data-hub`` as processes on loopback, then measures:

* ``cdh ttRPC, token reused``: GetResource over ttRPC to the CDH process
  (our behaviour: one token until it expires or is refused);
* ``in-process, token reused``: CcKbc + AaClient, same token policy, no CDH hop;
* ``in-process, fresh token per call``: a new CcKbc per call, so every
  GetResource runs GetToken -> full RCAR handshake, as upstream CDH does;
* ``plain HTTP round trip``: an unauthenticated GET on the same KBS (the floor).

Usage: .venv/bin/python bench/cdh_get_resource.py [-n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from cdh.aa import AaClient  # noqa: E402
from cdh.kbc import CcKbc  # noqa: E402
from coco_rpc.protos import api_pb2  # noqa: E402
from tests.cdh.stack import start_stack  # noqa: E402
from tests.support.aa import ttrpc_call  # noqa: E402
from tests.support.procfs import status_kib  # noqa: E402

URI = "kbs:///default/bench/secret"


def summarize(name: str, samples: list[float]) -> float:
    ms = sorted(s * 1000 for s in samples)
    med = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(f"  {name:<40} median {med:8.2f} ms   p95 {p95:8.2f} ms   (n={len(ms)})")
    return med


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def bench(n: int, json_out: Path | None = None) -> int:
    with tempfile.TemporaryDirectory() as d, start_stack(Path(d)) as s:
        s.set_resource("default/bench/secret", b"x" * 1024)
        assert s.cdh_sock is not None and s.aa_sock is not None
        req = api_pb2.GetResourceRequest(ResourcePath=URI).SerializeToString()
        sock = s.cdh_sock

        async def via_cdh() -> None:
            code, msg, _ = await asyncio.to_thread(
                ttrpc_call, sock, "api.GetResourceService", "GetResource", req
            )
            if code != 0:
                raise RuntimeError(msg)

        await via_cdh()  # first call attests; measure the steady state
        print(f"GetResource of a 1 KiB resource, {n} sequential calls each:")
        cdh_med = summarize("cdh ttRPC, token reused", await timed(n, via_cdh))

        aa = AaClient(f"unix://{s.aa_sock}")
        reuse = CcKbc(s.kbs_url, lambda: aa.get_token("kbs"))
        await reuse.get_resource(URI)
        reuse_med = summarize("in-process, token reused", await timed(n, lambda: reuse.get_resource(URI)))

        fresh_fetches = 0

        async def fresh() -> None:
            nonlocal fresh_fetches
            k = CcKbc(s.kbs_url, lambda: aa.get_token("kbs"))
            try:
                await k.get_resource(URI)
            finally:
                fresh_fetches += k.resource_client().handshakes
                await k.close()

        fresh_med = summarize("in-process, fresh token per call", await timed(n, fresh))

        async with httpx.AsyncClient() as h:

            async def plain() -> None:
                await h.get(f"{s.kbs_url}/kbs/v0/resource/default/bench/secret")

            await plain()
            http_med = summarize("plain HTTP round trip (401, no token)", await timed(n, plain))

        print(f"  token reuse is {fresh_med / reuse_med:.1f}x faster than re-attesting per call (in process)")
        print(f"  cdh ttRPC hop adds {cdh_med - reuse_med:.2f} ms; KBS HTTP floor {http_med:.2f} ms")
        print(
            f"  AA GetToken calls: reused client {reuse.resource_client().handshakes}, fresh mode {fresh_fetches}"
        )
        cdh_pid = s.procs[-1].pid
        print(f"  CDH peak RSS {status_kib(cdh_pid, 'VmHWM') / 1024:.1f} MiB")
        if json_out is not None:
            doc = {"n": n, "cdh_ttrpc_ms": cdh_med, "in_process_reused_ms": reuse_med,
                   "in_process_fresh_ms": fresh_med, "plain_http_ms": http_med,
                   "ratio": cdh_med / http_med}  # fmt: skip
            json_out.write_text(json.dumps(doc, indent=2))
        await reuse.close()
        await aa.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--json", type=Path, help="write the medians here too")
    a = ap.parse_args()
    return asyncio.run(bench(a.n, a.json))


if __name__ == "__main__":
    sys.exit(main())
