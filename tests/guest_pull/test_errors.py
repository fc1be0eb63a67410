"""The glue's errors: one root of its own, typed pull failures, bounded reads of its inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coco_rpc import Code, RpcError
from guest_pull import cli
from guest_pull.errors import AgentError, GlueError, KernelParamError, PullFailed
from guest_pull.host import load_annotations
from guest_pull.initdata import read_annotation_file
from guest_pull.kernel_params import MAX_CMDLINE_BYTES, read_kernel_params
from guest_pull.simulate import MAX_POD_BYTES, _load_pod, read_seed

ROOT = Path(__file__).resolve().parents[2]


def test_glue_errors_are_not_image_pull_errors() -> None:
    """CDH pulls, in its own process: nothing of image_pull is loaded by the glue,
    and its errors do not pretend to be ImagePullError."""
    assert GlueError.__mro__[1] is Exception
    code = (
        "import sys, pkgutil, importlib, guest_pull\n"
        "for m in pkgutil.iter_modules(guest_pull.__path__): importlib.import_module('guest_pull.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'image_pull'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _simulate_args(*extra: str) -> object:
    return cli.build_parser().parse_args(
        ["simulate", "--runtime-class", "kata-qemu-coco-dev", *extra, "pod.yaml"]
    )


@pytest.mark.parametrize(
    ("image", "host"),
    [("127.0.0.1:5000/ux:1", "127.0.0.1:5000"), ("reg.example/a/b:1", "reg.example"),
     ("localhost/x", "localhost"), ("busybox:1", "docker.io"), ("library/busybox", "docker.io")],
)  # fmt: skip
def test_simulate_names_its_own_flag_for_a_failed_pull(image: str, host: str) -> None:
    """CDH's message names coco-image's --plain-http; simulate's flag is
    --insecure-registry. Decided on the error's type and the image, never its text."""
    failed = PullFailed("CDH PullImage failed: TLS handshake with somewhere-else failed", image=image)
    assert cli._flag_hint(_simulate_args(), failed) == (  # type: ignore[arg-type]
        f" [in coco-guest-pull simulate: --insecure-registry {host} for a registry without TLS]"
    )
    # the registry is already plain HTTP: the flag is not the answer
    assert cli._flag_hint(_simulate_args("--insecure-registry", host), failed) == ""  # type: ignore[arg-type]
    # other errors, or other subcommands, get no hint even when the text mentions TLS
    assert cli._flag_hint(_simulate_args(), AgentError("TLS handshake with x failed")) == ""  # type: ignore[arg-type]
    agent = cli.build_parser().parse_args(["agent-storage", "--container-id", "c", "--storage", "s"])
    assert cli._flag_hint(agent, failed) == ""


def test_exit_status_follows_the_error_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 when an operation (a CDH call) failed, 2 when the input is wrong."""

    def failing(exc: Exception) -> object:
        def run(_args: object) -> int:
            raise exc

        return run

    call = PullFailed("CDH PullImage of x failed: boom", image="x")
    call.__cause__ = RpcError(Code.INTERNAL, "boom")
    for exc, rc in ((call, 1), (AgentError("Storage.source: empty"), 2), (KernelParamError("bad"), 2)):
        monkeypatch.setattr(cli, "_profiles", failing(exc))
        assert cli.run(["profiles"]) == rc
        assert f"coco-guest-pull: error: {exc}" in capsys.readouterr().err


def test_inputs_are_read_bounded(tmp_path: Path) -> None:
    """Oversized files and FIFOs are refused with a typed error, never read whole or waited on."""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_POD_BYTES + 1))
    with pytest.raises(GlueError, match="larger than"):
        _load_pod(big)
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"a" * (MAX_CMDLINE_BYTES + 1))
    with pytest.raises(KernelParamError, match="larger than"):
        read_kernel_params(cmdline)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(GlueError, match="not a regular file"):
        _load_pod(fifo)
    with pytest.raises(GlueError, match="not a regular file"):
        load_annotations(fifo)
    with pytest.raises(GlueError, match="--auth-json: cannot read"):
        read_seed(tmp_path / "absent", "--auth-json")


def test_json_inputs_are_strict(tmp_path: Path) -> None:
    dup = tmp_path / "dup.json"
    dup.write_text('{"a": "1", "a": "2"}')
    with pytest.raises(GlueError, match="duplicate"):
        load_annotations(dup)
    from attestation.initdata import InitDataError

    with pytest.raises(InitDataError, match="duplicate"):
        read_annotation_file(dup)
    storage = tmp_path / "storage.json"
    storage.write_text(json.dumps([1]))
    rc = subprocess.run(
        [str(Path(sys.executable).parent / "coco-guest-pull"), "agent-storage", "--container-id", "c",
         "--storage", str(storage)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rc.returncode == 2 and "--storage: not a JSON Storage: expected a JSON object" in rc.stderr
