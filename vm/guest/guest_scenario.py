"""The guest-pull scenario run inside the coco-dev test VM.

It does what the Kata agent does for a pod with trusted storage and a
guest-pulled image: writes AA/CDH configs, launches AA then CDH and waits for
their sockets, secure-mounts ``/dev/trusted_store`` (the blank virtio disk)
with LUKS2 + integrity at the image work dir over CDH's ttRPC socket, pulls
the image through CDH ``PullImage``, and reports what it sees. Results are
printed on the serial console as ``coco-guest: RESULT <json>`` lines; the
host harness parses them.

Configuration comes from the kernel command line: ``coco.cfg=<base64 JSON>``
with ``kbs_url``, ``registry`` (host:port as seen from the guest),
``pulls`` (list of ``{"image": ref, "expect": "ok"|"fail", "file": path}``),
and optional ``cdh_image`` (extra ``[image]`` TOML lines).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coco_rpc import connect
from coco_rpc.protos import api_pb2

AA_SOCK = "/run/confidential-containers/attestation-agent/attestation-agent.sock"
CDH_SOCK = "/run/confidential-containers/cdh.sock"
CONF_DIR = Path("/run/confidential-containers/initdata")
WORK_DIR = "/run/kata-containers/image/"
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"coco-guest: {msg}", flush=True)


def result(kind: str, **data: Any) -> None:
    print("coco-guest: RESULT " + json.dumps({"kind": kind, **data}, sort_keys=True), flush=True)


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def config() -> dict[str, Any]:
    for tok in Path("/proc/cmdline").read_text().split():
        if tok.startswith("coco.cfg="):
            cfg: dict[str, Any] = json.loads(base64.b64decode(tok.split("=", 1)[1]))
            return cfg
    raise SystemExit("no coco.cfg= on the kernel command line")


def launch(
    args: list[str], sock: str, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Launch like the Kata agent: remove a stale socket, spawn, poll for the socket."""
    Path(sock).unlink(missing_ok=True)
    log = open(f"/run/{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120  # TCG is slow; Kata's default is 6 s on real hardware
    while time.monotonic() < deadline:
        if Path(sock).exists():
            say(f"{name} socket up after {time.monotonic() - T0:.1f}s")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    say(f"{name} failed to start; log follows")
    print(Path(f"/run/{name}.log").read_text(errors="replace")[-3000:], flush=True)
    raise SystemExit(1)


def mount_source(mount_point: str) -> str | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt = line.split()[:2]
        if mnt.rstrip("/") == mount_point.rstrip("/"):
            return dev
    return None


def cryptsetup_status(mapper: str) -> dict[str, str]:
    out = subprocess.run(["cryptsetup", "status", mapper], capture_output=True, text=True).stdout
    say("cryptsetup status:\n" + out.rstrip())
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


async def secure_mount(cdh: Any) -> dict[str, Any]:
    dev = Path("/dev/trusted_store")
    maj_min = Path("/sys/block/vdb/dev").read_text().strip()
    if not dev.exists():
        os.symlink("/dev/vdb", dev)
    req = api_pb2.SecureMountRequest(
        volume_type="block-device",
        options={
            "deviceId": maj_min,
            "sourceType": "empty",
            "targetType": "fileSystem",
            "filesystemType": "ext4",
            "mkfsOpts": "-E lazy_journal_init",
            "encryptionType": "luks2",
            "dataIntegrity": "true",
        },
        mount_point=WORK_DIR,
    )
    t = time.monotonic()
    await cdh.call("api.SecureMountService", "SecureMount", req, api_pb2.SecureMountResponse, timeout=900)
    src = mount_source(WORK_DIR)
    if not src or ("/dev/mapper/" not in src and not src.startswith("/dev/dm-")):
        raise SystemExit(f"work dir {WORK_DIR} is not on a device-mapper device: {src}")
    mapper = Path(src).name
    st = cryptsetup_status(mapper)
    info = {
        "mapper": mapper,
        "device": src,
        "cipher": st.get("cipher", ""),
        "integrity": st.get("integrity", "none"),
        "mount_point": WORK_DIR,
        "seconds": round(time.monotonic() - t, 1),
    }
    result("secure_mount", **info)
    return info


async def pull(cdh: Any, n: int, spec: dict[str, Any]) -> dict[str, Any]:
    bundle = f"/run/kata-containers/c{n}"
    Path(bundle).mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    req = api_pb2.ImagePullRequest(image_url=spec["image"], bundle_path=bundle)
    try:
        resp = await cdh.call(
            "api.ImagePullService", "PullImage", req, api_pb2.ImagePullResponse, timeout=900
        )
    except Exception as exc:
        rootfs = Path(bundle) / "rootfs"
        leftover = rootfs.exists() and any(rootfs.iterdir())
        out = {
            "image": spec["image"],
            "ok": False,
            "error": str(exc)[:300],
            "leftover": leftover,
            "mounted": mount_source(str(rootfs)) is not None,
        }
        result("pull", **out)
        return out
    seconds = round(time.monotonic() - t, 1)
    data = (Path(bundle) / "rootfs" / spec["file"].lstrip("/")).read_bytes()
    out = {
        "image": spec["image"],
        "ok": True,
        "manifest_digest": resp.manifest_digest,
        "file": spec["file"],
        "file_text": data[:200].decode(errors="replace"),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "rootfs_on": mount_source(str(Path(bundle) / "rootfs")),
        "seconds": seconds,
        "uptime": uptime(),
    }
    result("pull", **out)
    return out


async def main() -> int:
    cfg = config()
    say(f"scenario start at uptime {uptime():.1f}s")
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CONF_DIR / "aa.toml").write_text(f'[token_configs.kbs]\nurl = "{cfg["kbs_url"]}"\n')
    (CONF_DIR / "cdh.toml").write_text(
        f'socket = "unix://{CDH_SOCK}"\n[aa]\naa_socket = "unix://{AA_SOCK}"\n'
        f'[kbc]\nname = "cc_kbc"\nurl = "{cfg["kbs_url"]}"\n'
        f'[image]\nwork_dir = "{WORK_DIR}"\n' + cfg.get("cdh_image", "")
    )
    aa = launch(
        ["attestation-agent", "--attestation_sock", f"unix://{AA_SOCK}", "-c", str(CONF_DIR / "aa.toml")],
        AA_SOCK,
        "attestation-agent",
    )
    cdh_proc = launch(
        ["confidential-data-hub", "-c", str(CONF_DIR / "cdh.toml")], CDH_SOCK, "confidential-data-hub"
    )
    result("boot", boot_seconds=round(uptime(), 1))
    cdh = connect(f"unix://{CDH_SOCK}")
    rc = 0
    try:
        await secure_mount(cdh)
        for n, spec in enumerate(cfg["pulls"]):
            out = await pull(cdh, n, spec)
            if out["ok"] != (spec.get("expect", "ok") == "ok"):
                rc = 1
    except SystemExit as exc:
        say(f"failed: {exc}")
        rc = 1
    except Exception as exc:
        say(f"failed: {type(exc).__name__}: {exc}")
        rc = 1
    finally:
        await cdh.close()
        if rc:
            for name in ("attestation-agent", "confidential-data-hub"):
                say(f"--- {name} log tail ---")
                print(Path(f"/run/{name}.log").read_text(errors="replace")[-2500:], flush=True)
        for p in (cdh_proc, aa):
            p.terminate()
    result("done", rc=rc)
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
