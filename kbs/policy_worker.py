"""Rego runs in worker processes, never in the server process: the event
loop keeps serving while a policy is evaluated, an evaluation that runs past
its time budget is killed, and a policy that crashes the engine (rego-cpp
segfaults on deep nesting) takes down only its worker. Workers are forked
from a ``forkserver`` that has the engine loaded, started on demand and
replaced after a timeout or crash. The largest init-data documents are parsed
there too (tomllib would hold the server's GIL for tens of milliseconds)."""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import logging
import multiprocessing
import os
import pickle
import select
import socket
import struct
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from .errors import ParsePolicyError, PolicyEngineError

__all__ = ["MAX_POLICY_DEPTH", "PolicyWorkers", "policy_nesting", "shared_workers"]

log = logging.getLogger(__name__)

#: deepest bracket nesting accepted in an uploaded policy (rego-cpp recurses per level)
MAX_POLICY_DEPTH = 64
_OPEN, _CLOSE = "([{", ")]}"
#: workers run this much nicer than the server, as batch tasks (a worker that wakes does not
#: preempt the server): when the CPUs are short, the event loop (every cheap request, /healthz)
#: goes before a policy that burns its whole time budget. The budget is wall-clock, so a
#: policy never gets more than it did. KBS_POLICY_WORKER_NICENESS overrides it (0-19)
WORKER_NICENESS = 10


def policy_nesting(text: str) -> int:
    """The deepest bracket nesting of Rego source, outside strings and comments (one linear pass)."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "`":
            j = text.find("`", i + 1)
            i = n if j < 0 else j
        elif c in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif c in _CLOSE:
            depth = max(0, depth - 1)
        i += 1
    return deepest


class _Failed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _lower_priority() -> None:  # pragma: no cover - runs in the worker process
    raw = os.environ.get("KBS_POLICY_WORKER_NICENESS", "")
    nice = int(raw) if raw.isdigit() and int(raw) <= 19 else WORKER_NICENESS
    os.nice(nice)
    if nice and hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the worker process
    from .policy import check_rego_inline, evaluate, evaluate_rules

    _lower_priority()

    def answer(status: str, value: Any) -> None:
        # JSON, never pickle: a worker that a hostile policy subverted cannot make the server
        # run code by what it answers
        conn.send_bytes(json.dumps([status, value]).encode())

    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "eval":
                res: Any = evaluate(*args[:4], with_reference_values=args[4])
            elif op == "rules":
                res = evaluate_rules(*args[:4], with_reference_values=args[4])
            elif op == "initdata":
                from .attestation_service import init_data_answer

                res = init_data_answer(*args)
            else:
                check_rego_inline(args[0])
                res = None
            answer("ok", res)
        except ParsePolicyError as exc:
            answer("parse", exc.detail)
        except PolicyEngineError as exc:
            answer("engine", exc.detail)
        except Exception as exc:  # anything the engine raises is a failed evaluation
            answer("engine", f"policy engine failed ({type(exc).__name__})")


_ctx_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["kbs.policy", "kbs.attestation_service", "regopy"])
            _ctx = ctx
        return _ctx


#: the largest answer read back from a worker (a policy's value as JSON)
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: answers up to this size are decoded on the event loop, larger ones in a thread
_INLINE_ANSWER_BYTES = 64 * 1024
_HEADER = struct.Struct("!i")  # multiprocessing.connection's frame header: a signed length


class _Worker:
    """One worker process. The parent's end of its socket pair is driven by the event loop
    (no thread per call): the request goes out, the answer comes back as one frame in
    :mod:`multiprocessing.connection`'s format, which the worker's ``Connection`` speaks."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._sock: socket.socket | None = None

    def alive(self) -> bool:
        """True while the process runs: its sentinel (the forkserver's end of a pipe) is not yet
        readable. One select() instead of is_alive()'s selector set-up on every call."""
        if self._sock is None or self._proc is None:
            return False
        try:
            ended, _, _ = select.select([self._proc.sentinel], [], [], 0)
        except (OSError, ValueError):  # closed under us: treat as gone
            return False
        return not ended

    def start(self) -> None:
        """Fork a worker from the forkserver (blocking: a round trip to it, and on first use
        the forkserver's own start; callers run this in a thread)."""
        self.stop()
        ctx = _context()
        parent: Connection
        child: Connection
        parent, child = ctx.Pipe()  # duplex: a socket pair
        proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="kbs-policy")
        proc.start()
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        sock.setblocking(False)
        self._proc, self._sock = proc, sock

    def stop(self) -> None:
        """Kill the process and drop the socket (never blocks: the forkserver reaps it)."""
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        self._proc = self._sock = None

    async def call(self, msg: tuple[str, tuple[Any, ...]], timeout_s: float) -> tuple[Any, ...]:
        """One round trip within ``timeout_s``. Raises :class:`_Failed` on timeout, crash or a
        malformed answer, and on cancellation stops the worker (it is mid-call): the next call
        gets a fresh one."""
        assert self._sock is not None and self._proc is not None
        sock, loop = self._sock, asyncio.get_running_loop()
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        done = False
        try:
            async with asyncio.timeout(timeout_s):
                await loop.sock_sendall(sock, _HEADER.pack(len(data)) + data)
                (size,) = _HEADER.unpack(await _recv_exactly(loop, sock, _HEADER.size))
                if not 0 <= size <= MAX_ANSWER_BYTES:
                    raise _Failed(f"the policy engine answered more than {MAX_ANSWER_BYTES} bytes")
                raw = await _recv_exactly(loop, sock, size)
                out = (
                    json.loads(raw)
                    if size <= _INLINE_ANSWER_BYTES
                    else await asyncio.to_thread(json.loads, raw)
                )
            done = True
        except TimeoutError as exc:
            raise _Failed(f"ran past its {timeout_s:g} s budget") from exc
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode if self._proc is not None else None
            raise _Failed(f"the policy engine died (exit {code})") from exc
        except ValueError as exc:  # not JSON (UnicodeDecodeError included)
            raise _Failed("the policy engine answered nonsense") from exc
        finally:
            if not done:
                self.stop()
        if not (isinstance(out, list) and len(out) == 2 and isinstance(out[0], str)):
            self.stop()
            raise _Failed("the policy engine answered nonsense")
        return tuple(out)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if k == 0:
            raise EOFError("the policy worker closed its end")
        got += k
    return bytes(buf)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class PolicyWorkers:
    """Up to ``count`` worker processes. A call takes an idle worker, or waits (in the event
    loop, no thread held) until one is handed back: at most ``count`` evaluations run at a
    time, each within the time budget. The pool serves any event loop, one after another or
    several at once (the idle list is guarded by a lock, waiters are woken on their own loop)."""

    def __init__(self, count: int = 2, *, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._all = [_Worker() for _ in range(max(1, count))]
        self._idle = list(self._all)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                with self._lock:
                    woken = fut.done() and not fut.cancelled()
                    if fut in self._waiters:
                        self._waiters.remove(fut)
                if woken:  # the hand-over meant for this call goes to the next one
                    self._wake_one()
                raise

    def _release(self, w: _Worker) -> None:
        with self._lock:
            self._idle.append(w)
        self._wake_one()

    def _wake_one(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    return
                fut = self._waiters.popleft()
            if fut.done():
                continue
            loop = fut.get_loop()
            if loop is _running_loop():  # this thread's loop: no wake-up through its self-pipe
                fut.set_result(None)
                return
            try:
                loop.call_soon_threadsafe(self._resolve, fut)
                return
            except RuntimeError:  # that loop is closed: the next waiter
                continue

    def _resolve(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled meanwhile
            self._wake_one()
        else:
            fut.set_result(None)

    async def _call(self, msg: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
        w = await self._acquire()
        try:
            if not w.alive():
                starting = asyncio.get_running_loop().run_in_executor(None, w.start)
                try:
                    await asyncio.shield(starting)
                except asyncio.CancelledError:  # the start goes on: the worker is free after it
                    starting.add_done_callback(lambda _: self._release(w))
                    w = None  # type: ignore[assignment]
                    raise
            return await w.call(msg, self.timeout_s)
        finally:
            if w is not None:
                self._release(w)

    async def evaluate(
        self,
        policy: str,
        query: str,
        input_doc: Any,
        data_doc: Mapping[str, Any],
        *,
        with_reference_values: bool = False,
    ) -> Any:
        """:func:`kbs.policy.evaluate` in a worker; any failure is :class:`PolicyEngineError`."""
        try:
            out = await self._call(
                ("eval", (policy, query, input_doc, dict(data_doc), with_reference_values))
            )
        except _Failed as exc:
            log.warning("policy evaluation failed: %s", exc.why)
            raise PolicyEngineError(f"policy evaluation failed: {exc.why}") from exc
        if out[0] == "ok":
            return out[1]
        raise PolicyEngineError(str(out[1]))

    async def evaluate_rules(
        self,
        policy: str,
        rules: tuple[str, ...],
        input_doc: Any,
        data_doc: Mapping[str, Any],
        *,
        with_reference_values: bool = False,
    ) -> dict[str, Any]:
        """:func:`kbs.policy.evaluate_rules` in a worker; any failure is :class:`PolicyEngineError`."""
        try:
            out = await self._call(
                ("rules", (policy, tuple(rules), input_doc, dict(data_doc), with_reference_values))
            )
        except _Failed as exc:
            log.warning("policy evaluation failed: %s", exc.why)
            raise PolicyEngineError(f"policy evaluation failed: {exc.why}") from exc
        if out[0] != "ok":
            raise PolicyEngineError(str(out[1]))
        if not isinstance(out[1], dict):
            raise PolicyEngineError("policy evaluation failed: the policy engine answered nonsense")
        return out[1]

    async def init_data(self, untrusted_toml: str, limits: Any) -> Any:
        """:func:`kbs.attestation_service.init_data_answer` in a worker, within the time budget;
        a crash or timeout is :class:`PolicyEngineError`."""
        try:
            out = await self._call(("initdata", (untrusted_toml, limits)))
        except _Failed as exc:
            log.warning("init-data parse failed: %s", exc.why)
            raise PolicyEngineError(f"init-data parse failed: {exc.why}") from exc
        if out[0] == "ok":
            return out[1]
        raise PolicyEngineError(str(out[1]))

    async def check(self, policy: str) -> None:
        """Parse-check a policy in a worker; a failure, crash or timeout is :class:`ParsePolicyError`."""
        depth = policy_nesting(policy)
        if depth > MAX_POLICY_DEPTH:
            raise ParsePolicyError(f"policy nests brackets {depth} deep (at most {MAX_POLICY_DEPTH})")
        try:
            out = await self._call(("check", (policy,)))
        except _Failed as exc:
            log.warning("policy parse check failed: %s", exc.why)
            raise ParsePolicyError(f"policy refused: {exc.why}") from exc
        if out[0] != "ok":
            raise ParsePolicyError(f"policy refused: {out[1]}")

    def stop(self) -> None:
        """Stop every worker process (idempotent; a later call starts fresh ones)."""
        for w in self._all:
            w.stop()

    async def close(self) -> None:
        self.stop()


_shared: PolicyWorkers | None = None


def shared_workers() -> PolicyWorkers:
    """A process-wide pool for callers that were not given one (tools, unit tests)."""
    global _shared
    if _shared is None:
        _shared = PolicyWorkers()
        atexit.register(_shared.stop)
    return _shared
