"""The layer worker's protocol: a closed set of error kinds on the wire, a strict job."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from image_pull.errors import (
    DecryptionError,
    DigestMismatch,
    InsufficientSpace,
    StoreError,
    UnpackError,
)
from image_pull.layer_worker import LayerJob, WorkerFailure, _failure, run_job

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer(tmp_path: Path) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("hello")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"hi\n"))
    tar = buf.getvalue()
    return gzip.compress(tar), "sha256:" + hashlib.sha256(tar).hexdigest()


def _job(dest: Path, size: int) -> LayerJob:
    return LayerJob(GZIP, "sha256", str(dest), size, 1 << 30)


@pytest.mark.parametrize(
    ("exc", "kind", "cls"),
    [
        (InsufficientSpace("full"), WorkerFailure.NO_SPACE, InsufficientSpace),
        (OSError(errno.EDQUOT, "quota"), WorkerFailure.NO_SPACE, InsufficientSpace),
        (DigestMismatch("x"), WorkerFailure.DIGEST, DigestMismatch),
        (DecryptionError("x"), WorkerFailure.DECRYPT, DecryptionError),
        (StoreError("x"), WorkerFailure.UNPACK, UnpackError),
        (OSError(errno.EIO, "io"), WorkerFailure.UNPACK, UnpackError),
    ],
)
def test_error_kinds_are_typed_both_ways(exc: BaseException, kind: WorkerFailure, cls: type) -> None:
    assert WorkerFailure.of(exc) is kind
    err = _failure({"ok": False, "error": kind.value, "message": "m"})
    assert type(err) is cls and str(err) == "m"


def test_an_unknown_kind_on_the_wire_is_an_unpack_error() -> None:
    """Only the enum's values mean anything: a class name (the old wire format) does not."""
    for name in ("InsufficientSpace", "SystemExit", None, 3):
        assert type(_failure({"ok": False, "error": name, "message": "m"})) is UnpackError


def test_run_job_reports_result_and_failure(tmp_path: Path) -> None:
    blob, diff_id = _layer(tmp_path)
    (tmp_path / "ok").mkdir()
    res = run_job(_job(tmp_path / "ok", len(blob)), io.BytesIO(blob))  # type: ignore[arg-type]
    assert res == {"ok": True, "diff_id": diff_id, "size": res["size"], "deferred": []}
    assert (tmp_path / "ok/hello").read_bytes() == b"hi\n"
    (tmp_path / "bad").mkdir()
    res = run_job(_job(tmp_path / "bad", len(blob)), io.BytesIO(blob[: len(blob) // 2]))  # type: ignore[arg-type]
    assert res["ok"] is False and res["error"] == WorkerFailure.UNPACK.value


def test_the_worker_refuses_a_job_with_unknown_or_missing_fields(tmp_path: Path) -> None:
    good = json.loads(json.dumps(_job(tmp_path, 1).__dict__))
    assert LayerJob.from_json(json.dumps(good)) == _job(tmp_path, 1)
    for job in ({k: v for k, v in good.items() if k != "dest"}, [1]):
        with pytest.raises(UnpackError, match="bad layer job"):
            LayerJob.from_json(json.dumps(job))
    cp = subprocess.run(
        [sys.executable, "-P", "-m", "image_pull.layer_worker", json.dumps({**good, "extra": 1})],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert cp.returncode == 2
    assert json.loads(cp.stdout) == {"ok": False, "error": "unpack", "message": "bad worker invocation"}


def test_worker_process_imports_no_network_or_crypto_stack() -> None:
    """One worker process per layer: its start-up is paid per layer (asyncio, httpx and
    cryptography cost about 0.1 s of it and belong to the parent's side)."""
    code = (
        "import sys, image_pull.layer_worker as w; assert callable(w.main); "
        "print(sorted(m for m in ('asyncio', 'httpx', 'cryptography', 'image_pull.registry') if m in sys.modules))"
    )
    cp = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert cp.stdout.strip() == "[]", cp.stdout
