"""KBS session footprint: sessions held and server RSS after N /auth calls
(sessions that are never attested, as a flood of unauthenticated clients leaves them).

    .venv/bin/python bench/kbs_sessions.py [--sessions 5000] [--storage Memory|LocalFs]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbs_client.rcar import auth_body
from tests.support.kbs import start_kbs
from tests.support.procfs import status_kib


async def flood(url: str, n: int, conc: int = 32) -> float:
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=conc)) as http:

        async def one() -> None:
            async with sem:
                r = await http.post(url + "/kbs/v0/auth", json=auth_body("sample"))
                assert r.status_code == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--storage", default="Memory", choices=["Memory", "LocalFs"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, start_kbs(Path(d), storage=args.storage) as kbs:
        assert kbs.proc is not None
        before = status_kib(kbs.proc.pid, "VmRSS")
        dt = asyncio.run(flood(kbs.url, args.sessions))
        after = status_kib(kbs.proc.pid, "VmRSS")
        held = (
            len(list((Path(d) / "storage" / "kbs_protocol_session").glob("*")))
            if args.storage == "LocalFs"
            else args.sessions
        )
    print(
        f"kbs_sessions: storage={args.storage}: {held} sessions held after {args.sessions} /auth in {dt:.1f} s "
        f"({args.sessions / dt:.0f}/s)"
    )
    print(
        f"  RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: {(after - before) * 1024 / max(1, args.sessions):.0f} bytes/session"
    )


if __name__ == "__main__":
    main()
