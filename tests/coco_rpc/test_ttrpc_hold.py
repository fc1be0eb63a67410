"""The attestation-agent and confidential-data-hub processes under ttRPC
memory-hold attacks (hand-framed peers on their Unix sockets): their peak RSS
stays bounded and they keep answering normal calls during and after.

* memory hold: 100 connections each declare a 4 MiB frame, send all of it
  but the last byte, and hold.
* in-flight hold (CDH): 2 connections x 64 ``PullImage`` requests of 3 MiB
  each (an unknown field), all stuck on a registry that never answers.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coco_rpc.protos import api_pb2, attestation_agent_pb2, ttrpc_pb2
from tests.cdh.stack import Stack, start_stack
from tests.support.aa import ttrpc_call
from tests.support.procfs import status_kib
from tests.support.stall import StallServer

pytestmark = pytest.mark.slow

MiB = 1 << 20
#: The bound issue-level acceptance sets for the guest daemons under attack.
RSS_LIMIT = 200 * MiB
SECRET = os.urandom(16)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, StallServer]]:
    tmp = tmp_path_factory.mktemp("hold")
    stall = StallServer()
    with start_stack(tmp, cdh=False) as s:
        s.start_cdh(f'[image]\nwork_dir = "{tmp / "images"}"\n')
        s.set_resource("default/cdh/secret", SECRET)
        yield s, stall
    stall.close()


def _normal_calls(s: Stack) -> None:
    assert s.aa_sock is not None and s.cdh_sock is not None
    code, msg, out = ttrpc_call(
        s.aa_sock, "attestation_agent.AttestationAgentService", "GetTeeType", b"", timeout=20
    )
    assert code == 0, msg
    assert attestation_agent_pb2.GetTeeTypeResponse.FromString(out).tee == "sample"
    req = api_pb2.GetResourceRequest(ResourcePath="kbs:///default/cdh/secret").SerializeToString()
    code, msg, out = ttrpc_call(s.cdh_sock, "api.GetResourceService", "GetResource", req, timeout=20)
    assert code == 0, msg
    assert api_pb2.GetResourceResponse.FromString(out).Resource == SECRET


def _push(conns: list[tuple[socket.socket, memoryview]], rounds_without_progress: int = 20) -> int:
    """Send what each non-blocking socket accepts until nothing moves; bytes sent."""
    sent, idle = 0, 0
    while idle < rounds_without_progress:
        moved = 0
        for i, (sock, rest) in enumerate(conns):
            if not rest:
                continue
            try:
                n = sock.send(rest[: 1 << 18])
            except (BlockingIOError, InterruptedError):
                continue
            conns[i] = (sock, rest[n:])
            moved += n
        sent += moved
        idle = 0 if moved else idle + 1
        time.sleep(0.02)
    return sent


def _memory_hold(path: Path, n: int = 100) -> tuple[list[socket.socket], int]:
    frame = memoryview(struct.pack(">IIBB", 4 * MiB, 1, 1, 0) + bytes(4 * MiB - 1))
    socks, conns = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.setblocking(False)
        socks.append(s)
        conns.append((s, frame))
    return socks, _push(conns)


def test_memory_hold_keeps_aa_and_cdh_bounded_and_answering(stack: tuple[Stack, StallServer]) -> None:
    s, _ = stack
    assert s.aa_sock is not None and s.cdh_sock is not None
    aa_pid, cdh_pid = s.procs[1].pid, s.procs[2].pid
    _normal_calls(s)
    base = {"aa": status_kib(aa_pid, "VmRSS") * 1024, "cdh": status_kib(cdh_pid, "VmRSS") * 1024}
    held_aa, sent_aa = _memory_hold(s.aa_sock)
    held_cdh, sent_cdh = _memory_hold(s.cdh_sock)
    _normal_calls(s)  # answered while every hostile connection holds its frame
    peak = {"aa": status_kib(aa_pid, "VmHWM") * 1024, "cdh": status_kib(cdh_pid, "VmHWM") * 1024}
    print(
        f"\nF5 memory hold: AA RSS {base['aa'] / MiB:.0f} MiB -> peak {peak['aa'] / MiB:.0f} MiB "
        f"({sent_aa / MiB:.0f} MiB accepted from 100 peers); CDH RSS {base['cdh'] / MiB:.0f} MiB -> "
        f"peak {peak['cdh'] / MiB:.0f} MiB ({sent_cdh / MiB:.0f} MiB accepted)"
    )
    for sock in held_aa + held_cdh:
        sock.close()
    _normal_calls(s)
    assert peak["aa"] < RSS_LIMIT and peak["cdh"] < RSS_LIMIT
    # the servers stopped reading: far less than the 400 MiB offered was taken in
    assert sent_aa < 100 * MiB and sent_cdh < 100 * MiB


def test_in_flight_pull_hold_keeps_cdh_bounded_and_answering(stack: tuple[Stack, StallServer]) -> None:
    s, stall = stack
    assert s.cdh_sock is not None
    cdh_pid = s.procs[2].pid
    pull = api_pb2.ImagePullRequest(
        image_url=f"127.0.0.1:{stall.port}/stalled/image:1", bundle_path=str(s.tmp / "bundle")
    ).SerializeToString()
    pull += b"\xba\x3e" + b"\x80\x80\xc0\x01" + bytes(3 * MiB)  # field 999, 3 MiB: skipped by the decoder
    conns = []
    for _ in range(2):
        frames = b"".join(
            struct.pack(">IIBB", len(body), 2 * i + 1, 1, 0) + body
            for i in range(64)
            for body in [
                ttrpc_pb2.Request(
                    service="api.ImagePullService", method="PullImage", payload=pull
                ).SerializeToString()
            ]
        )
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(s.cdh_sock))
        sock.setblocking(False)
        conns.append((sock, memoryview(frames)))
    socks = [c[0] for c in conns]
    sent = _push(conns, rounds_without_progress=250)
    _normal_calls(s)
    peak = status_kib(cdh_pid, "VmHWM") * 1024
    print(
        f"\nF5 in-flight hold: CDH peak RSS {peak / MiB:.0f} MiB ({sent / MiB:.0f} MiB of 384 MiB taken in)"
    )
    for sock in socks:
        sock.close()
    _normal_calls(s)
    assert peak < RSS_LIMIT
    assert sent < 100 * MiB


def test_junk_frames_do_not_flood_the_logs(stack: tuple[Stack, StallServer]) -> None:
    s, _ = stack
    assert s.aa_sock is not None and s.cdh_sock is not None
    logs = [s.tmp / "aa.log", s.tmp / "cdh.log"]
    before = [p.stat().st_size for p in logs]
    junk = b"".join(struct.pack(">IIBB", 0, 2 * i + 1, 9, 0) for i in range(20_000))  # 200 KB
    for path in (s.aa_sock, s.cdh_sock):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(path))
            sock.sendall(junk)
    _normal_calls(s)
    grown = [p.stat().st_size - b for p, b in zip(logs, before, strict=True)]
    # one warning line per connection (the red team saw 1.84 MB per daemon)
    assert all(g < 4096 for g in grown), grown
