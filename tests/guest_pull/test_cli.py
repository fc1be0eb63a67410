"""coco-guest-pull as a process: exit codes, JSON on stdout, errors naming the field."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

GP = str(Path(sys.executable).parent / "coco-guest-pull")
CID = "abc123"
ANN = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.image-name": "example.com/app:1"}
TOML = b'version = "0.1.0"\nalgorithm = "sha512"\n[data]\n"aa.toml" = "x"\n'


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GP, *args], capture_output=True, text=True, timeout=60)


def test_host_storage(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(ANN))
    cp = _run(
        "host-storage",
        "--container-id",
        CID,
        "--annotations",
        str(tmp_path / "a.json"),
        "--force-guest-pull",
        "--protobuf",
    )
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["source"] == "example.com/app:1" and doc["mount_point"] == f"/run/kata-containers/{CID}/rootfs"
    assert base64.b64decode(doc["protobuf_b64"]).startswith(b"\x0a\x10image_guest_pull")
    # not a guest-pull container
    cp = _run("host-storage", "--container-id", CID, "--annotations", str(tmp_path / "a.json"))
    assert cp.returncode == 2 and "not a guest-pull container" in cp.stderr
    cp = _run(
        "host-storage",
        "--container-id",
        CID,
        "--annotations",
        str(tmp_path / "a.json"),
        "--mount-option",
        "io.katacontainers.volume=e30=",
    )  # "{}"
    assert cp.returncode == 2 and "volume_type" in cp.stderr


def test_initdata(tmp_path: Path) -> None:
    (tmp_path / "ann").write_text(base64.b64encode(gzip.compress(TOML)).decode())
    cp = _run(
        "initdata",
        "--annotation-file",
        str(tmp_path / "ann"),
        "--image",
        str(tmp_path / "img"),
        "--tee",
        "tdx",
        "--extract",
        str(tmp_path / "x"),
    )
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["digest"] == hashlib.sha512(TOML).hexdigest() and doc["data"] == ["aa.toml"]
    assert doc["tee"]["value_hex"] == hashlib.sha512(TOML).hexdigest()[:96]
    assert (tmp_path / "img").read_bytes()[:8] == b"initdata" and (tmp_path / "img").stat().st_size % 512 == 0
    assert (tmp_path / "x" / "initdata.toml").read_bytes() == TOML
    (tmp_path / "bad").write_text(base64.b64encode(gzip.compress(TOML.replace(b"sha512", b"crc32"))).decode())
    cp = _run("initdata", "--annotation-file", str(tmp_path / "bad"))
    assert cp.returncode == 2 and "algorithm" in cp.stderr


def test_kernel_params_and_profiles() -> None:
    cp = _run("kernel-params", "agent.image_pull_timeout=30 agent.aa_kbc_params=cc_kbc::http://k:1")
    assert cp.returncode == 0 and json.loads(cp.stdout)["image_pull_timeout"] == 30
    cp = _run("kernel-params", "agent.image_pull_timeout=x")
    assert cp.returncode == 2 and "agent.image_pull_timeout" in cp.stderr
    cp = _run("profiles", "kata-qemu-snp")
    assert cp.returncode == 0 and json.loads(cp.stdout)["initdata_field"] == "HOSTDATA"
    assert _run("profiles", "kata-nope").returncode == 2


def test_agent_storage_pause(tmp_path: Path) -> None:
    b = tmp_path / "pause_bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "config.json").write_text(json.dumps({"process": {"args": ["/pause"]}}))
    (b / "rootfs" / "pause").write_bytes(b"pause")
    storage = {
        "driver": "image_guest_pull",
        "source": "pause",
        "fstype": "overlay",
        "driver_options": ['image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}'],
        "mount_point": f"/run/kata-containers/{CID}/rootfs",
    }
    (tmp_path / "s.json").write_text(json.dumps(storage))
    cp = _run(
        "agent-storage",
        "--container-id",
        CID,
        "--storage",
        str(tmp_path / "s.json"),
        "--run-dir",
        str(tmp_path / "run"),
        "--pause-bundle",
        str(b),
    )
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["rootfs"] == str(tmp_path / "run" / CID / "rootfs")
    storage["driver_options"] = ["nope"]
    (tmp_path / "s.json").write_text(json.dumps(storage))
    cp = _run(
        "agent-storage",
        "--container-id",
        CID,
        "--storage",
        str(tmp_path / "s.json"),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert cp.returncode == 2 and "image_guest_pull=" in cp.stderr
