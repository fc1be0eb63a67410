"""The VM scenario's container start (vm/guest/guest_scenario.py run_container),
on the host with Debian's runc: a bundle as ``coco-image pull`` writes it (its
config.json from image_pull.bundle.build_runtime_config, a static busybox
rootfs) runs unchanged and its output and exit status come back; a bundle runc
refuses raises RuncRefused. Each case runs in a child process, since
run_container makes its caller the child subreaper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image_pull.bundle import build_runtime_config
from image_pull.manifest import ImageConfig

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
    pytest.mark.skipif(
        shutil.which("runc") is None, reason="runc is not installed (scripts/install-deps.sh)"
    ),
    pytest.mark.skipif(
        shutil.which("busybox") is None, reason="busybox-static is not installed (make deps-vm)"
    ),
]

SCRIPT = b"""#!/bin/sh
echo "out of the bundle"
read -r host < /proc/sys/kernel/hostname
echo "pid $$ on $host" >&2
echo "pid $$ on $host"
exit 3
"""

DRIVER = """
import json, sys
from pathlib import Path
from vm.guest.guest_scenario import RuncRefused, run_container
try:
    print(json.dumps(run_container(sys.argv[1], Path(sys.argv[2]), state=Path(sys.argv[3]))))
except RuncRefused as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def _bundle(tmp: Path, args: tuple[str, ...]) -> Path:
    bundle = tmp / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", rootfs / "bin/busybox")
    os.symlink("busybox", rootfs / "bin/sh")
    (rootfs / "bin/app").write_bytes(SCRIPT)
    (rootfs / "bin/app").chmod(0o755)
    cfg = ImageConfig(
        os="linux", architecture="amd64", variant=None, diff_ids=(), entrypoint=args, cmd=None,
        env=("CHECK=1",), working_dir="/", user="", volumes=(), labels={}, stop_signal=None,
        exposed_ports=(), author=None, created=None,
    )  # fmt: skip
    (bundle / "config.json").write_bytes(
        build_runtime_config(
            cfg, rootfs=rootfs, image_ref="test/app:v1", manifest_digest="sha256:" + "0" * 64
        )
    )
    return bundle


def _run(tmp: Path, bundle: Path) -> dict[str, object]:
    state = tmp / "state"
    state.mkdir()
    before = (bundle / "config.json").read_bytes()
    cp = subprocess.run(
        [sys.executable, "-c", DRIVER, f"t{os.getpid()}", str(bundle), str(state)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert (bundle / "config.json").read_bytes() == before  # the spec is used unchanged
    out: dict[str, object] = json.loads(cp.stdout.strip().splitlines()[-1])
    return out


def test_pulled_bundle_runs_unchanged_and_reports_exit_and_stdout(tmp_path: Path) -> None:
    out = _run(tmp_path, _bundle(tmp_path, ("/bin/app",)))
    assert out["container_exit"] == 3
    # stdout alone, from the container's own PID and UTS namespaces (hostname from the spec)
    assert out["container_stdout"] == "out of the bundle\npid 1 on coco\n"
    assert "pid 1 on coco" in str(out["container_stderr"])
    # the container is gone afterwards
    assert not list((tmp_path / "state" / "runc").glob("t*"))


def test_bundle_runc_refuses_is_reported(tmp_path: Path) -> None:
    out = _run(tmp_path, _bundle(tmp_path, ("/bin/absent",)))
    assert "refused" in out, out
    assert "runc" in str(out["refused"]) and "/bin/absent" in str(out["refused"]), out
    assert not list((tmp_path / "state" / "runc").glob("t*"))


FLOOD = b"""#!/bin/sh
busybox yes 0123456789abcdef | busybox head -c 100663296
busybox yes fedcba9876543210 | busybox head -c 100663296 >&2
echo "last words" >&2
"""

MEASURING_DRIVER = """
import json, resource, sys
from pathlib import Path
from vm.guest.guest_scenario import run_container
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run_container(sys.argv[1], Path(sys.argv[2]), state=Path(sys.argv[3]))
out["grew_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(out))
"""


def test_a_container_flooding_its_output_is_read_bounded(tmp_path: Path) -> None:
    """96 MiB on stdout and on stderr: the report keeps the head of stdout and the tail
    of stderr, and reading them does not take the files into memory."""
    bundle = _bundle(tmp_path, ("/bin/flood",))
    (bundle / "rootfs/bin/flood").write_bytes(FLOOD)
    (bundle / "rootfs/bin/flood").chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    cp = subprocess.run(
        [sys.executable, "-c", MEASURING_DRIVER, f"f{os.getpid()}", str(bundle), str(state)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-2000:]
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert out["container_exit"] == 0
    assert out["container_stdout"] == ("0123456789abcdef\n" * 200)[:2000]
    err = str(out["container_stderr"])
    assert len(err) == 500 and err.endswith("last words\n") and "\nfedcba9876543210\n" in err
    assert out["grew_kib"] < 16 * 1024, out["grew_kib"]
