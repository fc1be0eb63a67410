"""Out-of-process layer unpack: ``python -m image_pull.layer_worker`` (internal).

The puller runs one worker per layer so that decompression, diff_id hashing
and unpacking of several layers use several CPUs (the GIL would serialise
them in threads). Protocol:

* argv[1]: JSON job ``{"media_type", "diff_algo", "dest", "compressed_size",
  "max_layer_bytes", "flatten", "progress", "budget_left", "budget_message"}``;
* stdin: the layer blob exactly as downloaded (its digest is checked by the
  parent, which closes stdin only after the digest matched, or kills the
  worker when it did not);
* stdout: with ``progress``, lines ``{"progress": <bytes written>}`` as the
  layer unpacks (the parent sums them into the pull's disk budget and kills the
  worker past it); last, one JSON line ``{"ok": true, "diff_id", "size",
  "deferred"}`` or ``{"ok": false, "error": <class name>, "message": <text>}``.

The worker never touches the network and writes only below ``dest``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from image_pull.errors import ImagePullError, InsufficientSpace, UnpackError
from image_pull.stream import CountingReader, HashingReader
from image_pull.unpack import EntryConflict, UnpackOptions, open_decompressed, read_ahead, unpack_layer

__all__ = ["main", "run_job"]

MAX_JOB = 1 << 16


class _MissingHardlinkTarget(UnpackError):
    """A hardlink points at a file of a lower layer (needs the lowers to unpack)."""


def _unpack(
    reader: BinaryIO, dest: Path, compressed_size: int, *, flatten: bool
) -> tuple[tuple[str, str], ...]:
    """Unpack one layer; returns hardlinks whose target lives in a lower layer (when deferred)."""
    opts = UnpackOptions(flatten=flatten)
    defer = "defer_missing_hardlinks" in UnpackOptions.__dataclass_fields__
    if defer and not flatten:
        opts = dataclasses.replace(opts, defer_missing_hardlinks=True)  # type: ignore[call-arg,unused-ignore]
    try:
        stats = unpack_layer(reader, dest, options=opts, compressed_size=compressed_size)
    except EntryConflict as exc:
        msg = str(exc)
        if not flatten and "hardlink target" in msg and "does not exist" in msg:
            raise _MissingHardlinkTarget(msg) from None
        raise
    deferred = getattr(stats, "deferred_hardlinks", ())
    return tuple((os.fsdecode(a), os.fsdecode(b)) for a, b in deferred)


def _report(written: int) -> None:
    """A progress line for the parent's per-pull budget (the last line is the result)."""
    sys.stdout.write(json.dumps({"progress": written}) + "\n")
    sys.stdout.flush()


def run_job(job: dict[str, Any], stream: Any) -> dict[str, Any]:
    try:
        received = CountingReader(stream)
        dec = open_decompressed(received, str(job["media_type"]))  # type: ignore[arg-type]
        hr = HashingReader(
            dec,
            str(job["diff_algo"]),
            limit=int(job["max_layer_bytes"]),
            source=received,
            progress=_report if job.get("progress") else None,
            budget_left=int(job["budget_left"]) if job.get("budget_left") is not None else None,
            budget_message=str(job.get("budget_message", "the pull's unpacked-size budget is used up"))[:300],
        )
        # gunzip + diff_id on a helper thread (GIL-free C), overlapped with the unpack
        with read_ahead(hr) as ahead:  # type: ignore[arg-type]
            deferred = _unpack(
                ahead, Path(job["dest"]), int(job["compressed_size"]), flatten=bool(job["flatten"])
            )
        hr.drain()
        return {"ok": True, "diff_id": hr.digest(), "size": hr.count, "deferred": [list(d) for d in deferred]}
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return {"ok": False, "error": InsufficientSpace.__name__, "message": "no space left"}
        return {"ok": False, "error": UnpackError.__name__, "message": str(exc.strerror or exc)[:300]}
    except ImagePullError as exc:
        name = type(exc).__name__
        if "no space left" in str(exc):
            name = InsufficientSpace.__name__
        return {"ok": False, "error": name, "message": str(exc)[:500]}


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
    if len(sys.argv) != 2 or len(sys.argv[1]) > MAX_JOB:
        print(json.dumps({"ok": False, "error": "UnpackError", "message": "bad worker invocation"}))
        return 2
    job = json.loads(sys.argv[1])
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
    result = run_job(job, stdin)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
