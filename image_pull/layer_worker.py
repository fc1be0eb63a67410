"""Running one layer's decompress + diff_id + unpack, in a thread or a worker process.

The puller feeds the layer blob as it downloads (``stream_blob(sink)``) into
one of two consumers:

* :func:`via_process` (``python -m image_pull.layer_worker``): one worker
  process per layer, so decompression, hashing and unpacking of several layers
  use several CPUs (the GIL would serialise them in threads);
* :func:`via_thread`: a thread fed through a :class:`~image_pull.stream.ChunkPipe`
  (used for encrypted layers: the key never leaves the puller's process).

Both run :func:`unpack_stream`. Worker protocol:

* argv[1]: a :class:`LayerJob` as JSON;
* stdin: the layer blob exactly as downloaded (its digest is checked by the
  parent, which closes stdin only after the digest matched, or kills the
  worker when it did not);
* stdout: with ``progress``, lines ``{"progress": <bytes written>}`` as the
  layer unpacks (the parent sums them into the pull's disk budget and kills the
  worker past it); last, one JSON line ``{"ok": true, "diff_id", "size",
  "deferred"}`` or ``{"ok": false, "error": <WorkerFailure value>, "message": <text>}``.

The error kind on the wire is a closed set (:class:`WorkerFailure`), never a
class name. The worker never touches the network and writes only below ``dest``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from coco_common.strict_json import strict_loads
from image_pull.budget import UnpackBudget
from image_pull.errors import (
    DecryptionError,
    DigestMismatch,
    ImagePullError,
    InsufficientSpace,
    UnpackError,
)
from image_pull.stream import ChunkPipe, CountingReader, HashingReader, PipeAborted, Readable, as_binary
from image_pull.unpack import UnpackOptions, open_decompressed, read_ahead, unpack_layer

if TYPE_CHECKING:
    # The worker process imports none of these (asyncio, and httpx and cryptography behind
    # the hooks): about 0.1 s of start-up per layer. The parent's side imports asyncio where
    # it runs.
    import asyncio

    from image_pull.hooks import LayerDecryptor

__all__ = [
    "LayerJob",
    "LayerResult",
    "WorkerFailure",
    "main",
    "run_job",
    "unpack_stream",
    "via_process",
    "via_thread",
]

MAX_JOB = 1 << 16
_F_SETPIPE_SZ = 1031

#: ``stream_blob(sink)``: download the layer into ``sink``, return the bytes downloaded
Download = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[int]]


class WorkerFailure(enum.Enum):
    """Why a layer worker failed: the only error kinds the worker protocol carries."""

    UNPACK = "unpack"
    NO_SPACE = "no-space"
    DIGEST = "digest"
    DECRYPT = "decrypt"

    @classmethod
    def of(cls, exc: BaseException) -> WorkerFailure:
        if isinstance(exc, InsufficientSpace) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        ):
            return cls.NO_SPACE
        if isinstance(exc, DigestMismatch):
            return cls.DIGEST
        if isinstance(exc, DecryptionError):
            return cls.DECRYPT
        return cls.UNPACK

    def error(self, message: str) -> ImagePullError:
        cls = {
            WorkerFailure.NO_SPACE: InsufficientSpace,
            WorkerFailure.DIGEST: DigestMismatch,
            WorkerFailure.DECRYPT: DecryptionError,
        }.get(self, UnpackError)
        return cls(message)


@dataclass(frozen=True)
class LayerJob:
    """One layer to unpack (argv[1] of the worker, as JSON)."""

    media_type: str
    diff_algo: str
    dest: str
    compressed_size: int
    max_layer_bytes: int
    flatten: bool = False
    progress: bool = False  # report progress lines (the parent keeps a budget)
    budget_left: int | None = None
    budget_message: str = "the pull's unpacked-size budget is used up"

    @classmethod
    def from_json(cls, text: str) -> LayerJob:
        doc = strict_loads(text)
        if not isinstance(doc, dict) or set(doc) != set(cls.__dataclass_fields__):
            raise UnpackError("bad layer job")
        return cls(**doc)


@dataclass(frozen=True)
class LayerResult:
    diff_id: str
    size: int  # uncompressed bytes
    #: hardlinks (link, target) whose target lives in a lower layer
    deferred: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------- the work itself
def unpack_stream(
    received: CountingReader,
    src: Readable,
    job: LayerJob,
    progress: Callable[[int], None] | None = None,
    *,
    ahead: bool = False,
) -> LayerResult:
    """Decompress ``src``, hash it (diff_id) and unpack it into ``job.dest``.

    ``received`` counts the compressed bytes that arrived (the expansion ratio is
    measured against them); ``src`` is what to decompress (``received`` itself, or
    a decrypting reader over it). With ``ahead``, decompression and hashing run on a
    helper thread (GIL-free C work) overlapped with the unpack.
    """
    dec = open_decompressed(as_binary(src), job.media_type.removesuffix("+encrypted"))
    hr = HashingReader(
        dec,
        job.diff_algo,
        limit=job.max_layer_bytes,
        source=received,
        progress=progress,
        budget_left=job.budget_left,
        budget_message=job.budget_message[:300],
    )
    # hardlinks into lower layers are deferred (the puller copies their targets up)
    opts = UnpackOptions(flatten=job.flatten, defer_missing_hardlinks=not job.flatten)
    if ahead:
        with read_ahead(as_binary(hr)) as stream:
            stats = unpack_layer(stream, Path(job.dest), options=opts, compressed_size=job.compressed_size)
    else:
        stats = unpack_layer(as_binary(hr), Path(job.dest), options=opts, compressed_size=job.compressed_size)
    hr.drain()
    deferred = tuple((os.fsdecode(a), os.fsdecode(b)) for a, b in stats.deferred_hardlinks)
    return LayerResult(hr.digest(), hr.count, deferred)


def _report(written: int) -> None:
    """A progress line for the parent's per-pull budget (the last line is the result)."""
    sys.stdout.write(json.dumps({"progress": written}) + "\n")
    sys.stdout.flush()


def run_job(job: LayerJob, stream: BinaryIO) -> dict[str, Any]:
    """The worker's side: unpack ``stream`` and say how it went (the result line)."""
    try:
        received = CountingReader(stream)
        res = unpack_stream(received, received, job, _report if job.progress else None, ahead=True)
        return {
            "ok": True,
            "diff_id": res.diff_id,
            "size": res.size,
            "deferred": [list(d) for d in res.deferred],
        }
    except (OSError, ImagePullError) as exc:
        kind = WorkerFailure.of(exc)
        if isinstance(exc, OSError):
            message = "no space left" if kind is WorkerFailure.NO_SPACE else str(exc.strerror or exc)[:300]
        else:
            message = str(exc)[:500]
        return {"ok": False, "error": kind.value, "message": message}


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a puller killed with -9 takes its workers with it."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def main() -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1
    try:
        if len(sys.argv) != 2 or len(sys.argv[1]) > MAX_JOB:
            raise UnpackError("bad worker invocation")
        job = LayerJob.from_json(sys.argv[1])
    except (UnpackError, ValueError, TypeError):
        bad = {"ok": False, "error": WorkerFailure.UNPACK.value, "message": "bad worker invocation"}
        print(json.dumps(bad))
        return 2
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
    result = run_job(job, stdin)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------- the parent's side
class _ConsumerStopped(ImagePullError):
    """The unpacker ended (with its own error) while the download was still waiting."""


async def _unless_done(download: Awaitable[int], consumer: asyncio.Future[Any]) -> int:
    """Run ``download`` unless ``consumer`` (the unpacker) finishes first: an unpacker
    that failed must not wait for a registry that holds the connection open."""
    import asyncio

    task = asyncio.ensure_future(download)
    try:
        await asyncio.wait({task, consumer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise _ConsumerStopped


def _job_with_budget(job: LayerJob, budget: UnpackBudget | None) -> LayerJob:
    if budget is None:
        return job
    return LayerJob(
        **{
            **asdict(job),
            "progress": True,
            "budget_left": budget.remaining(job.dest),
            "budget_message": budget.exceeded(),
        }
    )


def _consume(
    pipe: ChunkPipe, job: LayerJob, decryptor: LayerDecryptor | None, budget: UnpackBudget | None
) -> LayerResult:
    """The thread consumer: ``pipe`` -> [decrypt] -> :func:`unpack_stream`."""
    from image_pull.ocicrypt.layer import DecryptingReader  # the parent's side only

    try:
        received = CountingReader(pipe)
        src: Readable = received
        if decryptor is not None:
            src = decryptor(src)
        try:
            progress = (lambda n: budget.update(job.dest, n)) if budget is not None else None
            res = unpack_stream(received, src, job, progress)
        except (ImagePullError, OSError):
            if isinstance(src, DecryptingReader):
                src.check_after_failure()  # report tampering (HMAC) rather than its symptom
            raise
        if isinstance(src, DecryptingReader):
            src.drain()  # the HMAC covers the whole ciphertext: read it to EOF before committing
            if not src.verified:
                raise DecryptionError(f"layer {job.dest}: ciphertext was not verified")
        if budget is not None:
            budget.update(job.dest, res.size)
        return res
    except OSError as exc:
        kind = WorkerFailure.of(exc)
        if kind is WorkerFailure.NO_SPACE:
            raise kind.error(f"no space left in {job.dest} while unpacking a layer") from exc
        raise UnpackError(f"layer {job.dest}: {exc.strerror or exc}") from exc
    finally:
        pipe.consumer_done()


async def via_thread(
    download: Download, job: LayerJob, decryptor: LayerDecryptor | None, budget: UnpackBudget | None
) -> tuple[int, LayerResult]:
    """Download into a thread that unpacks; returns (bytes downloaded, result)."""
    import asyncio

    loop = asyncio.get_running_loop()
    pipe = ChunkPipe(loop)
    job = _job_with_budget(job, budget)
    fut = loop.run_in_executor(None, _consume, pipe, job, decryptor, budget)
    try:
        try:
            nbytes = await _unless_done(download(pipe.put), fut)
        except _ConsumerStopped:
            raise PipeAborted("the unpacker stopped") from None  # the unpacker's error follows
        pipe.finish()
    except PipeAborted:
        # the consumer failed first: its error is the real one
        pipe.abort(PipeAborted("download stopped"))
        await asyncio.wait([fut])
        exc = fut.exception()
        if exc is not None:
            raise exc from None  # the consumer's own error, as it raised it
        raise
    except BaseException as exc:
        pipe.abort(exc)
        with contextlib.suppress(BaseException):
            await asyncio.shield(fut)
        raise
    try:
        return nbytes, await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


class _WorkerOutput:
    """Reads a worker's stdout and stderr to EOF concurrently (so it never blocks):
    progress lines go to the budget (killing the worker past it), the last line is kept."""

    def __init__(self, proc: asyncio.subprocess.Process, dest: str, budget: UnpackBudget | None) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.dest = dest
        self.budget = budget
        self.over_budget: ImagePullError | None = None
        import asyncio

        self.out_task = asyncio.ensure_future(self._results(proc.stdout))
        self.err_task = asyncio.ensure_future(self._tail(proc.stderr, 4096))

    @staticmethod
    async def _tail(reader: asyncio.StreamReader, keep: int) -> bytes:
        buf = b""
        while chunk := await reader.read(1 << 16):
            buf = (buf + chunk)[-keep:]
        return buf

    def _progress(self, line: bytes) -> None:
        try:
            n = int(strict_loads(line)["progress"])
        except (ValueError, KeyError, TypeError):
            return
        if self.budget is None or self.over_budget is not None:
            return
        try:
            self.budget.update(self.dest, n)
        except ImagePullError as exc:
            self.over_budget = exc
            if self.proc.returncode is None:
                self.proc.kill()

    async def _results(self, reader: asyncio.StreamReader) -> bytes:
        pending = b""
        last = b""
        while chunk := await reader.read(1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            pending = pending[-(1 << 20) :]
            for line in lines:
                if line.startswith(b'{"progress":'):
                    self._progress(line)
                elif line.strip():
                    last = line[-(1 << 20) :]
        return pending if pending.strip() else last

    async def result(self) -> dict[str, Any]:
        out, err = await self.out_task, await self.err_task
        await self.proc.wait()
        if self.over_budget is not None:
            raise self.over_budget
        try:
            doc = strict_loads(out.decode().strip())
        except (ValueError, UnicodeDecodeError) as exc:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise UnpackError(f"layer worker failed: {tail[0][:200]}") from exc
        if not isinstance(doc, dict):
            raise UnpackError("layer worker failed: no result")
        return doc

    def cancel(self) -> None:
        for t in (self.out_task, self.err_task):
            t.cancel()


def _failure(doc: dict[str, Any]) -> ImagePullError:
    try:
        kind = WorkerFailure(doc.get("error"))
    except ValueError:
        kind = WorkerFailure.UNPACK
    return kind.error(str(doc.get("message", "layer worker failed"))[:500])


async def _spawn(job: LayerJob) -> asyncio.subprocess.Process:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # no cwd on sys.path: modules in the caller's directory must not run as the worker
        "-m",
        "image_pull.layer_worker",
        json.dumps(asdict(job)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    pipe_fd = proc.stdin.get_extra_info("pipe")
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe_fd.fileno(), _F_SETPIPE_SZ, 1 << 20)
    return proc


async def via_process(
    download: Download, job: LayerJob, budget: UnpackBudget | None
) -> tuple[int, LayerResult]:
    """Download into a worker process that unpacks; returns (bytes downloaded, result)."""
    import asyncio

    job = _job_with_budget(job, budget)
    proc = await _spawn(job)
    assert proc.stdin is not None
    stdin = proc.stdin
    out = _WorkerOutput(proc, job.dest, budget)

    async def sink(chunk: bytes) -> None:
        if out.over_budget is not None:
            raise out.over_budget
        stdin.write(chunk)
        await stdin.drain()

    try:
        try:
            nbytes = await _unless_done(download(sink), out.out_task)
        except (BrokenPipeError, ConnectionResetError, _ConsumerStopped) as exc:
            doc = await out.result()  # the worker stopped reading: its error is the real one
            if doc.get("ok"):
                raise UnpackError("layer worker stopped reading early") from exc
            raise _failure(doc) from None  # the worker's error; the broken pipe is its symptom
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()
        doc = await out.result()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        out.cancel()
        raise
    if not doc.get("ok"):
        raise _failure(doc)
    if budget is not None:
        budget.update(job.dest, int(doc["size"]))
    deferred = tuple((str(a), str(b)) for a, b in doc.get("deferred", []))
    return nbytes, LayerResult(str(doc["diff_id"]), int(doc["size"]), deferred)


if __name__ == "__main__":
    sys.exit(main())
