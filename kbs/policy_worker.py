"""Rego runs in worker processes, never in the server process: the event
loop keeps serving while a policy is evaluated, an evaluation that runs past
its time budget is killed, and a policy that crashes the engine (rego-cpp
segfaults on deep nesting) takes down only its worker. Workers are forked
from a ``forkserver`` that has the engine loaded, started on demand and
replaced after a timeout or crash."""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from .errors import ParsePolicyError, PolicyEngineError

__all__ = ["MAX_POLICY_DEPTH", "PolicyWorkers", "policy_nesting", "shared_workers"]

log = logging.getLogger(__name__)

#: deepest bracket nesting accepted in an uploaded policy (rego-cpp recurses per level)
MAX_POLICY_DEPTH = 64
_OPEN, _CLOSE = "([{", ")]}"


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


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the worker process
    from .policy import check_rego_inline, evaluate

    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "eval":
                res: Any = evaluate(*args[:4], with_reference_values=args[4])
            else:
                check_rego_inline(args[0])
                res = None
            conn.send(("ok", res))
        except ParsePolicyError as exc:
            conn.send(("parse", exc.detail))
        except PolicyEngineError as exc:
            conn.send(("engine", exc.detail))
        except Exception as exc:  # anything the engine raises is a failed evaluation
            conn.send(("engine", f"policy engine failed ({type(exc).__name__})"))


_ctx_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["kbs.policy", "regopy"])
            _ctx = ctx
        return _ctx


class _Worker:
    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = _context()
        parent: Connection
        child: Connection
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="kbs-policy")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        return parent

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def call(self, msg: tuple[str, tuple[Any, ...]], timeout_s: float) -> tuple[Any, ...]:
        """Blocking round trip (run in a thread). Raises :class:`_Failed` on timeout or crash,
        after which the worker is replaced on the next call."""
        conn = self._conn if self._proc is not None and self._proc.is_alive() else None
        if conn is None:
            self.stop()
            conn = self._start()
        try:
            conn.send(msg)
            if not conn.poll(timeout_s):
                self.stop()
                raise _Failed(f"ran past its {timeout_s:g} s budget")
            out = conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode if self._proc is not None else None
            self.stop()
            raise _Failed(f"the policy engine died (exit {code})") from exc
        if not isinstance(out, tuple):
            self.stop()
            raise _Failed("the policy engine answered nonsense")
        return out


class PolicyWorkers:
    """Up to ``count`` worker processes, each owned by one thread of a private executor: calls
    queue in the executor, so a burst of expensive evaluations never takes the event loop's
    threads, and the pool serves any event loop."""

    def __init__(self, count: int = 2, *, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="kbs-policy")
        self._local = threading.local()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def _blocking(self, msg: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
        w = getattr(self._local, "worker", None)
        if w is None:
            w = self._local.worker = _Worker()
            with self._lock:
                self._all.append(w)
        return w.call(msg, self.timeout_s)

    async def _call(self, msg: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._blocking, msg)

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
        """Stop every worker process (blocking; idempotent)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.stop()

    async def close(self) -> None:
        await asyncio.to_thread(self.stop)


_shared: PolicyWorkers | None = None


def shared_workers() -> PolicyWorkers:
    """A process-wide pool for callers that were not given one (tools, unit tests)."""
    global _shared
    if _shared is None:
        _shared = PolicyWorkers()
        atexit.register(_shared.stop)
    return _shared
