"""The guest-pull scenario run inside the coco-dev test VM (by /sbin/coco-init).

It does what the Kata agent does for a pod with trusted storage and a
guest-pulled image:

1. writes ``aa.toml`` / ``cdh.toml`` where the agent puts them from initdata
   (``/run/confidential-containers/initdata/``) and launches AA then CDH with
   the agent's built-in launch plan (AA ``--attestation_sock <upstream path>
   -c aa.toml``, CDH ``-c cdh.toml`` with ``OCICRYPT_KEYPROVIDER_CONFIG``),
   waiting for each socket;
2. attests: AA ``GetToken("kbs")`` (sample evidence, RCAR with the KBS) and a
   CDH ``GetResource`` of a probe resource;
3. secure-mounts ``/dev/trusted_store`` (the blank virtio disk) with LUKS2 +
   integrity at the image work dir over CDH's ttRPC socket, with the options
   the agent sends;
4. pulls each configured image through CDH ``PullImage`` into a bundle under
   ``/run/kata-containers/<cid>`` and reports what it sees (expected failures
   included), then the same checks for a second CDH whose credentials the KBS
   denies;
5. runs the first pulled bundle as a container the way the agent does: ``runc``
   with the bundle's own ``config.json`` and rootfs (nothing changed), this
   process as the child subreaper (as a shim is), ``create`` then ``start``,
   waiting for the container's exit status and capturing its stdout. A bundle
   runc refuses (``create`` or ``start`` fails) makes the pull a failure.

Results go to the serial console as ``coco-guest: RESULT <json>`` lines; the
host harness (tests/integration/vm_harness.py) parses them. Configuration
comes from QEMU's fw_cfg (``opt/org.coco-py/cfg``, JSON) or the kernel command
line (``coco.cfg=<urlsafe base64 JSON>``).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coco_rpc import connect
from coco_rpc.protos import api_pb2, attestation_agent_pb2
from guest_pull.agent import CdhClient, ImagePullHandler
from guest_pull.storage import Storage

AA_SOCK = "/run/confidential-containers/attestation-agent/attestation-agent.sock"
AA_TPM_SOCK = "/run/confidential-containers/attestation-agent/attestation-agent-tpm.sock"
TPM_DEVICE = "/dev/tpmrm0"
# Set for the coco-dev AA: a device that does not exist hides the vTPM from its
# detection, so it falls back to the sample TEE as on a VM without a TPM.
NO_TPM = "/dev/coco-no-tpm"
CDH_SOCK = "/run/confidential-containers/cdh.sock"
CONF_DIR = Path("/run/confidential-containers/initdata")
WORK_DIR = "/run/kata-containers/image/"
OCICRYPT_CONFIG = "/etc/ocicrypt_config.json"
LAUNCH_TIMEOUT_S = 180  # Kata's default is 6 s on real hardware; TCG is ~20x slower
CONTAINER_TIMEOUT_S = 300
PR_SET_CHILD_SUBREAPER = 36
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"coco-guest: {msg}", flush=True)


def result(kind: str, **data: Any) -> None:
    print("coco-guest: RESULT " + json.dumps({"kind": kind, **data}, sort_keys=True), flush=True)


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


FW_CFG = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/org.coco-py/cfg/raw")


def config() -> dict[str, Any]:
    """The scenario config: QEMU fw_cfg ``opt/org.coco-py/cfg`` (JSON), else
    ``coco.cfg=<urlsafe base64 JSON>`` on the kernel command line."""
    if FW_CFG.exists():
        with FW_CFG.open("rb") as f:
            data: dict[str, Any] = json.loads(f.read(1 << 20))
        return data
    for tok in Path("/proc/cmdline").read_text().split():
        if tok.startswith("coco.cfg="):
            raw = tok.split("=", 1)[1]
            cfg: dict[str, Any] = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            return cfg
    raise SystemExit("no coco.cfg= on the kernel command line")


def launch(
    args: list[str], sock: str, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Launch like the Kata agent: remove a stale socket, spawn, poll for the socket."""
    Path(sock).unlink(missing_ok=True)
    log = open(f"/run/{name}.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    t = time.monotonic()
    while time.monotonic() - t < LAUNCH_TIMEOUT_S:
        if Path(sock).exists():
            say(f"{name} socket up after {time.monotonic() - t:.1f}s (uptime {uptime():.1f}s)")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    say(f"{name} failed to start; log follows")
    print(Path(f"/run/{name}.log").read_text(errors="replace")[-3000:], flush=True)
    raise SystemExit(1)


def mounts() -> list[tuple[str, str, str, str]]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype, opts = line.split()[:4]
        out.append((dev, mnt, fstype, opts))
    return out


def mount_of(mount_point: str) -> tuple[str, str, str, str] | None:
    want = mount_point.rstrip("/")
    found = None
    for m in mounts():
        if m[1].rstrip("/") == want:
            found = m  # the last one wins (mounted on top)
    return found


def luks_header(device: str) -> Path:
    """CDH's detached LUKS2 header for ``device`` (sourceType=empty)."""
    name = base64.urlsafe_b64encode(device.encode()).rstrip(b"=").decode()
    return Path("/run/confidential-containers/cdh/luks-headers") / f"{name}.header"


def cryptsetup_status(mapper: str, device: str) -> dict[str, str]:
    """``cryptsetup status`` of the mapping, with CDH's detached header
    (without it cryptsetup cannot tell the LUKS type and integrity)."""
    args = ["cryptsetup", "status", mapper]
    hdr = luks_header(device)
    if hdr.exists():
        args[2:2] = ["--header", str(hdr)]
    say("$ " + " ".join(args))
    out = subprocess.run(args, capture_output=True, text=True).stdout
    for line in out.rstrip().splitlines():
        say(f"  | {line}")
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def dm_name(dev: str) -> str:
    """The device-mapper name of /dev/mapper/<name> or /dev/dm-N."""
    real = Path(dev).resolve().name
    name_file = Path("/sys/block") / real / "dm" / "name"
    return name_file.read_text().strip() if name_file.exists() else Path(dev).name


async def kbs_token(aa: Any) -> dict[str, Any]:
    """AA ``GetToken("kbs")`` (an RCAR round with the KBS): the token's claims."""
    resp = await aa.call(
        "attestation_agent.AttestationAgentService",
        "GetToken",
        attestation_agent_pb2.GetTokenRequest(TokenType="kbs"),
        attestation_agent_pb2.GetTokenResponse,
        timeout=300,
    )
    token = json.loads(resp.Token)["token"]  # the response also holds the TEE private key: never print it
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


_NOT_TEE_CLAIMS = {"runtime_data_claims", "report_data", "init_data", "init_data_claims"}


def cpu_evidence(claims: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """(TEE name, its verifier claims, EAR status) of the token's ``cpu0`` submod."""
    cpu = claims.get("submods", {}).get("cpu0", {})
    annotated = cpu.get("ear.veraison.annotated-evidence", {})
    tees = [k for k in annotated if k not in _NOT_TEE_CLAIMS]
    if len(tees) != 1:
        raise RuntimeError(f"the token's cpu0 submod names {tees}, not one TEE")
    return tees[0], annotated[tees[0]], cpu.get("ear.status")


async def attest(aa: Any, cdh: Any, probe: str | None) -> None:
    t = time.monotonic()
    claims = await kbs_token(aa)
    submods = claims.get("submods", {})
    info: dict[str, Any] = {
        "token_seconds": round(time.monotonic() - t, 1),
        "submods": {k: v.get("ear.status") for k, v in submods.items() if isinstance(v, dict)},
        "profile": claims.get("eat_profile"),
        "tee": cpu_evidence(claims)[0],
    }
    if probe:
        r = await cdh.call(
            "api.GetResourceService",
            "GetResource",
            api_pb2.GetResourceRequest(ResourcePath=probe),
            api_pb2.GetResourceResponse,
            timeout=300,
        )
        info["probe_resource"] = probe
        info["probe_sha256"] = hashlib.sha256(r.Resource).hexdigest()
    result("attest", **info)


async def secure_mount(cdh: Any) -> dict[str, Any]:
    dev = Path("/dev/trusted_store")
    if not dev.exists():
        raise SystemExit("/dev/trusted_store is missing (no virtio disk with serial=trusted_store)")
    blk = dev.resolve().name
    maj_min = (Path("/sys/block") / blk / "dev").read_text().strip()
    say(f"/dev/trusted_store -> /dev/{blk} ({maj_min}); SecureMount at {WORK_DIR}")
    req = api_pb2.SecureMountRequest(
        volume_type="block-device",
        options={  # what kata-agent sends for /dev/trusted_store (cdh_handler_trusted_storage)
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
    m = mount_of(WORK_DIR)
    if m is None:
        raise SystemExit(f"nothing is mounted at {WORK_DIR} after SecureMount")
    src = m[0]
    if not src.startswith("/dev/mapper/") and not src.startswith("/dev/dm-"):
        raise SystemExit(f"work dir {WORK_DIR} is not on a device-mapper device: {src}")
    mapper = dm_name(src)
    say(f"mount: {' '.join(m)}")
    st = cryptsetup_status(mapper, f"/dev/{blk}")
    say("$ dmsetup table")
    table = subprocess.run(["dmsetup", "table"], capture_output=True, text=True).stdout
    for line in table.rstrip().splitlines():
        say(
            "  | "
            + " ".join(
                "<key>" if len(w) >= 64 and w.strip("0123456789abcdef:") == "" else w for w in line.split()
            )
        )
    targets = sorted({line.split()[3] for line in table.splitlines() if len(line.split()) > 3})
    # The work dir's file system really lives on the dm-crypt device.
    same_dev = os.stat(WORK_DIR).st_dev == os.stat(src).st_rdev
    info = {
        "mapper": mapper,
        "device": src,
        "dm_device": "/dev/" + Path(src).resolve().name,
        "backing": st.get("device", ""),
        "type": st.get("type", ""),
        "cipher": st.get("cipher", ""),
        "keysize": st.get("keysize", ""),
        "integrity": st.get("integrity", "none"),
        "integrity_keysize": st.get("integrity keysize", ""),
        "sector_size": st.get("sector size", ""),
        "dm_targets": targets,
        "work_dir_on_mapper": same_dev,
        "mount_point": WORK_DIR,
        "fstype": m[2],
        "seconds": round(time.monotonic() - t, 1),
    }
    result("secure_mount", **info)
    return info


def _bundle_state(bundle: Path) -> dict[str, Any]:
    rootfs = bundle / "rootfs"
    return {
        "leftover": rootfs.exists() and any(rootfs.iterdir()),
        "mounted": mount_of(str(rootfs)) is not None,
        "config_json": (bundle / "config.json").exists(),
    }


class RuncRefused(Exception):
    """runc would not create or start the container from the bundle."""


def become_subreaper() -> None:
    """Orphans (the container's init once ``runc create`` exits) become our
    children, so we can wait for their exit status, as a containerd shim does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _head(path: Path, limit: int) -> str:
    """The first ``limit`` bytes of a file the container wrote (it may write without end)."""
    with path.open("rb") as f:
        return f.read(limit).decode(errors="replace")


def _tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a file the container (or runc) wrote."""
    with path.open("rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
        return f.read(limit).decode(errors="replace")


def run_container(cid: str, bundle: Path, *, state: Path = Path("/run")) -> dict[str, Any]:
    """Run the bundle with runc, unchanged: create (refusals surface here), start,
    wait for the container's exit, return its exit status and stdout. runc keeps
    its state in ``state/runc``; the container's stdio goes to ``state/ctr-*``."""
    become_subreaper()
    out_p, err_p, pid_p = (state / f"ctr-{cid[:12]}.{n}" for n in ("out", "err", "pid"))
    runc = ["runc", "--root", str(state / "runc")]
    t = time.monotonic()
    with out_p.open("wb") as out, err_p.open("wb") as err:
        # no terminal in the spec: runc hands these descriptors to the container's process
        cp = subprocess.run(
            [*runc, "create", "--bundle", str(bundle), "--pid-file", str(pid_p), cid],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=CONTAINER_TIMEOUT_S,
        )  # fmt: skip
    if cp.returncode != 0:
        raise RuncRefused(f"runc create: {_tail(err_p, 4096)[-400:].strip()}")
    pid = int(pid_p.read_text())
    try:
        st = subprocess.run([*runc, "start", cid], capture_output=True, text=True, timeout=120)
        if st.returncode != 0:
            raise RuncRefused(f"runc start: {st.stderr[-400:].strip()}")
        deadline = time.monotonic() + CONTAINER_TIMEOUT_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                subprocess.run([*runc, "kill", cid, "KILL"], capture_output=True, timeout=60)
                raise RuntimeError(f"the container did not exit within {CONTAINER_TIMEOUT_S}s")
            time.sleep(0.1)
    finally:
        subprocess.run([*runc, "delete", "--force", cid], capture_output=True, timeout=120)
    code = os.waitstatus_to_exitcode(status)
    stdout = _head(out_p, 8192)
    say(f"runc: container {cid[:12]} exited {code} after {time.monotonic() - t:.1f}s; stdout:")
    for line in stdout.splitlines()[:20]:
        say(f"  | {line}")
    return {
        "container_exit": code,
        "container_stdout": stdout[:2000],
        "container_stderr": _tail(err_p, 4096)[-500:],
        "container_seconds": round(time.monotonic() - t, 1),
    }


def release_bundle(bundle: Path) -> None:
    """What the agent does with a container that could not be created: unmount
    its rootfs and remove the bundle (the layers stay in the store)."""
    rootfs = bundle / "rootfs"
    if subprocess.run(["umount", str(rootfs)], capture_output=True).returncode != 0 and mount_of(str(rootfs)):
        subprocess.run(["umount", "-l", str(rootfs)], capture_output=True)
    (bundle / "config.json").unlink(missing_ok=True)
    if rootfs.is_dir() and not any(rootfs.iterdir()):
        rootfs.rmdir()


def store_layers() -> dict[str, int]:
    """Committed layers of the layer store on the work dir: chain id -> inode."""
    layers = Path(WORK_DIR) / "layers"
    return {p.name: p.stat().st_ino for p in layers.iterdir()} if layers.is_dir() else {}


def _accepted(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line[line.index("policy accepted") :] for line in text.splitlines() if "policy accepted" in line]


async def pull(
    cdh: Any, cid: str, spec: dict[str, Any], cdh_log: Path = Path("/run/confidential-data-hub.log")
) -> dict[str, Any]:
    bundle = Path("/run/kata-containers") / cid
    bundle.mkdir(parents=True, exist_ok=True)
    label = spec.get("label", cid)
    say(f"PullImage {spec['image']} -> {bundle} ({label})")
    n_accepted = len(_accepted(cdh_log))
    layers_before = store_layers()
    n_log = len(cdh_log.read_text(errors="replace").splitlines()) if cdh_log.exists() else 0
    t = time.monotonic()
    try:
        if "storage" in spec:  # the agent's way: a Storage from the host runtime, through the glue
            storage = Storage.from_json(spec["storage"])
            say(
                f"agent: Storage driver={storage.driver} source={storage.source} "
                f"mount_point={storage.mount_point}"
            )
            handler = ImagePullHandler(CdhClient(f"unix://{CDH_SOCK}"), image_pull_timeout=900)
            rootfs_path = await handler.create_device(storage, cid)
            if rootfs_path != bundle / "rootfs":
                raise RuntimeError(f"the agent glue put the rootfs at {rootfs_path}")
            manifest_digest = handler.digests[cid]
        else:  # a bare PullImage RPC
            req = api_pb2.ImagePullRequest(image_url=spec["image"], bundle_path=str(bundle))
            resp = await cdh.call(
                "api.ImagePullService", "PullImage", req, api_pb2.ImagePullResponse, timeout=900
            )
            manifest_digest = resp.manifest_digest
        seconds = round(time.monotonic() - t, 1)
        # the agent's next step: start the container from the bundle (a refusal fails the pull)
        try:
            ran = run_container(cid, bundle) if spec.get("run") else {}
        except RuncRefused:
            release_bundle(bundle)
            raise
    except Exception as exc:
        # CDH's own account of the failure (new log lines since this pull began)
        for line in cdh_log.read_text(errors="replace").splitlines()[n_log:] if cdh_log.exists() else []:
            if any(w in line for w in ("WARNING", "ERROR", "could not unwrap", " 401 ", " 403 ")):
                say(f"  cdh: {line[-300:]}")
        out = {
            "label": label,
            "image": spec["image"],
            "ok": False,
            "error": str(exc)[:400],
            "seconds": round(time.monotonic() - t, 1),
            **_bundle_state(bundle),
        }
        result("pull", **out)
        return out
    # What CDH's policy check accepted for this very pull (image_pull.trust logs it).
    accepted = _accepted(cdh_log)[n_accepted:]
    rootfs = bundle / "rootfs"
    data = (rootfs / spec["file"].lstrip("/")).read_bytes()
    m = mount_of(str(rootfs))
    opts = dict(o.split("=", 1) for o in m[3].split(",") if "=" in o) if m else {}
    work_dev = os.stat(WORK_DIR).st_dev
    # overlay lowerdirs are relative to the layer store (short mount options); check the
    # upper dir and every store entry lie on the work dir's (dm-crypt) file system
    store = [Path(WORK_DIR) / e for e in sorted(os.listdir(WORK_DIR)) if e != "lost+found"]
    say(f"rootfs: {' '.join(m) if m else 'not a mount point'}")
    say(f"{spec['file']}: {data[:200].decode(errors='replace')!r}")
    if accepted:
        say(accepted[-1])
    out = {
        "label": label,
        "image": spec["image"],
        "ok": True,
        "manifest_digest": manifest_digest,
        "via": "agent Storage" if "storage" in spec else "PullImage",
        "file": spec["file"],
        "file_text": data[:200].decode(errors="replace"),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "signature": accepted[-1] if accepted else "",
        "rootfs_fstype": m[2] if m else None,
        "layers": len(opts.get("lowerdir", "").split(":")) if opts.get("lowerdir") else 0,
        "upper_on_work_dir": upper_on(opts.get("upperdir", ""), bundle, work_dev),
        "store_entries": [e.name for e in store],
        "store_layers": len(layers_after := store_layers()),
        "new_layers": sum(1 for k, ino in layers_after.items() if layers_before.get(k) != ino),
        "store_on_work_dir": bool(store) and all(e.stat().st_dev == work_dev for e in store),
        "seconds": seconds,
        "uptime": uptime(),
        **ran,
    }
    result("pull", **out)
    return out


def upper_on(upperdir: str, bundle: Path, work_dev: int) -> bool:
    """Whether the overlay upper dir of ``bundle`` lies on the work dir's device.
    image_pull mounts with upper/work relative to the bundle's record dir
    ``<work_dir>/bundles/<id>/l`` (so no path can inject mount options); the
    record's bundle.json names the bundle it serves."""
    if upperdir.startswith("/"):
        return upperdir.startswith(WORK_DIR) and os.stat(upperdir).st_dev == work_dev
    for rec in (Path(WORK_DIR) / "bundles").glob("*/bundle.json"):
        if json.loads(rec.read_text()).get("bundle") == str(bundle.resolve()):
            upper = (rec.parent / "l" / upperdir).resolve()
            return upper.is_dir() and upper.is_relative_to(WORK_DIR) and os.stat(upper).st_dev == work_dev
    return False


def guest_pcrs() -> dict[str, str]:
    """The SHA-256 PCRs as the guest kernel reads them from its TPM (sysfs)."""
    d = Path("/sys/class/tpm/tpm0/pcr-sha256")
    return {p.name: p.read_text().strip().lower() for p in d.iterdir()} if d.is_dir() else {}


async def tpm_token(
    name: str, sock: str, ak_handle: str, initdata: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Start an AA (as the Kata agent would on a VM with a TPM) whose attester uses
    the AK at ``ak_handle``, get a KBS token from it, stop it: (attester, claims).
    With ``initdata`` the AA binds its digest (PCR 8) and sends it with the evidence."""
    args = ["attestation-agent", "--attestation_sock", f"unix://{sock}", "-c", str(CONF_DIR / "aa.toml")]
    proc = launch(
        args + (["-t", str(initdata)] if initdata else []),
        sock,
        name,
        {"AA_TPM_DEVICE": TPM_DEVICE, "AA_TPM_AK_HANDLE": ak_handle},
    )
    # the AA logs which attester detection chose (plain text or a JSON log record)
    found = re.findall(r"primary attester: ([\w-]+)", Path(f"/run/{name}.log").read_text(errors="replace"))
    attester = found[-1] if found else ""
    client = connect(f"unix://{sock}")
    try:
        return attester, await kbs_token(client)
    finally:
        await client.close()
        proc.terminate()


async def tpm_attest(cfg: dict[str, Any]) -> dict[str, Any]:
    """Attest with the vTPM: an AA whose detection finds it runs the ``tpm``
    attester (a quote of PCRs 0-23 by the AK the KBS is configured to trust, and
    the firmware's event log) through a full RCAR round; then an AA quoting with
    an AK the KBS does not trust must get no token."""
    t = time.monotonic()
    out: dict[str, Any] = {"ok": False, "device": TPM_DEVICE}
    try:
        if not Path(TPM_DEVICE).exists():
            raise RuntimeError(f"{TPM_DEVICE} is missing: the kernel found no TPM")
        desc = Path("/sys/class/tpm/tpm0/tpm_version_major")
        say(f"TPM: {TPM_DEVICE}, TPM {desc.read_text().strip() if desc.exists() else '?'}.x")
        # securityfs carries the firmware's event log (binary_bios_measurements) the attester sends
        if mount_of("/sys/kernel/security") is None:
            subprocess.run(["mount", "-t", "securityfs", "securityfs", "/sys/kernel/security"], check=False)
        elog = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
        say(f"TPM event log: {'present' if elog.exists() else 'absent'}")
        initdata = None
        if cfg.get("initdata_toml"):
            initdata = CONF_DIR / "initdata-tpm.toml"
            initdata.write_text(cfg["initdata_toml"])
        attester, claims = await tpm_token("attestation-agent-tpm", AA_TPM_SOCK, cfg["ak_handle"], initdata)
        tee, tclaims, status = cpu_evidence(claims)
        annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        pcrs = {int(k[3:]): v for k, v in tclaims.items() if k.startswith("pcr") and k[3:].isdigit()}
        out.update(
            attester=attester,
            tee=tee,
            ear_status=status,
            claims={k: tclaims[k] for k in ("ak_public", "ak_trust", "report_data") if k in tclaims}
            | {k: v for k, v in tclaims.items() if k.startswith("pcr")},
            pcrs_quoted=sorted(pcrs),
            # neither the reset value (0) nor that of the DRTM PCRs outside locality 4 (all ones)
            pcrs_measured=sorted(i for i, v in pcrs.items() if v.strip("0") and v.strip("f")),
            event_log_events=len(tclaims.get("uefi_event_logs") or []),
            # trustee's layout: the verifier's init_data (PCR 8 of the verified quote) at the top
            # level, and beside it the init-data the KBS parsed, present only when it was bound
            init_data=annotated.get("init_data"),
            init_data_claims=annotated.get("init_data_claims"),
            guest_pcrs=guest_pcrs(),
            token_seconds=round(time.monotonic() - t, 1),
        )
        say(f"TPM attestation: {tee} token, AK trust {tclaims.get('ak_trust')}, PCR0 {tclaims.get('pcr00')}")
        if cfg.get("untrusted_ak_handle"):
            try:
                await tpm_token("attestation-agent-tpm-untrusted", AA_TPM_SOCK, cfg["untrusted_ak_handle"])
            except Exception as exc:
                out["untrusted_ak_error"] = f"{type(exc).__name__}: {exc}"[:400]
                say(f"TPM attestation with an untrusted AK refused: {out['untrusted_ak_error'][:200]}")
            else:
                raise RuntimeError("the KBS issued a token for a quote by an AK it does not trust")
        out["ok"] = True
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:400]
        say(f"TPM attestation failed: {out['error']}")
        for name in ("attestation-agent-tpm", "attestation-agent-tpm-untrusted"):
            log = Path(f"/run/{name}.log")
            if log.exists():
                for line in log.read_text(errors="replace")[-2000:].splitlines():
                    say(f"  {name}: {line}")
    result("tpm_attest", **out)
    return out


def cdh_toml(kbs_url: str, socket: str, image_toml: str) -> str:
    return (
        f'socket = "unix://{socket}"\n'
        f'[aa]\naa_socket = "unix://{AA_SOCK}"\n'
        f'[kbc]\nname = "cc_kbc"\nurl = "{kbs_url}"\n'
        f'[image]\nwork_dir = "{WORK_DIR}"\n{image_toml}'
    )


async def deny_case(cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A second CDH whose registry credentials the KBS refuses to release."""
    sock = "/run/confidential-containers/cdh-deny.sock"
    conf = CONF_DIR / "cdh-deny.toml"
    conf.write_text(cdh_toml(cfg["kbs_url"], sock, spec["image_toml"]))
    before = [m for m in mounts() if m[1].startswith("/run/kata-containers/")]
    proc = launch(
        ["confidential-data-hub", "-c", str(conf)],
        sock,
        "confidential-data-hub-deny",
        {"OCICRYPT_KEYPROVIDER_CONFIG": OCICRYPT_CONFIG},
    )
    client = connect(f"unix://{sock}")
    try:
        out = await pull(
            client, "deny", {**spec, "label": "kbs-denied"}, Path("/run/confidential-data-hub-deny.log")
        )
    finally:
        await client.close()
        proc.terminate()
    after = [m for m in mounts() if m[1].startswith("/run/kata-containers/")]
    out["new_mounts"] = [m[1] for m in after if m not in before]
    result("deny", **out)
    return out


async def main() -> int:
    cfg = config()
    rootfs_up = (
        float(Path("/run/coco-rootfs-uptime").read_text())
        if Path("/run/coco-rootfs-uptime").exists()
        else None
    )
    say(f"scenario start at uptime {uptime():.1f}s (root fs mounted at {rootfs_up}s)")
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CONF_DIR / "aa.toml").write_text(f'[token_configs.kbs]\nurl = "{cfg["kbs_url"]}"\n')
    (CONF_DIR / "cdh.toml").write_text(cdh_toml(cfg["kbs_url"], CDH_SOCK, cfg.get("image_toml", "")))
    # kata-agent's built-in plan: `-c <path>` only when the config file exists.
    aa_args = ["attestation-agent", "--attestation_sock", f"unix://{AA_SOCK}"]
    if (CONF_DIR / "aa.toml").exists():
        aa_args += ["-c", str(CONF_DIR / "aa.toml")]
    aa = launch(aa_args, AA_SOCK, "attestation-agent", {"AA_TPM_DEVICE": NO_TPM} if cfg.get("tpm") else None)
    cdh_proc = launch(
        ["confidential-data-hub", "-c", str(CONF_DIR / "cdh.toml")],
        CDH_SOCK,
        "confidential-data-hub",
        {"OCICRYPT_KEYPROVIDER_CONFIG": OCICRYPT_CONFIG},
    )
    result("boot", boot_seconds=rootfs_up, components_up_seconds=round(uptime(), 1))
    cdh = connect(f"unix://{CDH_SOCK}")
    aa_client = connect(f"unix://{AA_SOCK}")
    rc = 0
    try:
        await attest(aa_client, cdh, cfg.get("probe_resource"))
        if cfg.get("tpm") is not None and not (await tpm_attest(cfg["tpm"]))["ok"]:
            rc = 1
        await secure_mount(cdh)
        for n, spec in enumerate(cfg["pulls"]):
            out = await pull(cdh, spec.get("cid", f"c{n}"), spec)
            if out["ok"] != (spec.get("expect", "ok") == "ok"):
                say(f"unexpected outcome for {spec.get('label')}: ok={out['ok']}")
                rc = 1
        if cfg.get("deny"):
            out = await deny_case(cfg, cfg["deny"])
            if out["ok"] or out["new_mounts"]:
                rc = 1
        st = os.statvfs(WORK_DIR)
        result("work_dir", used_mb=round((st.f_blocks - st.f_bfree) * st.f_frsize / 2**20, 1), mounts=[
            " ".join(m[:3]) for m in mounts() if m[1].startswith("/run/kata-containers")
        ])  # fmt: skip
    except SystemExit as exc:
        say(f"failed: {exc}")
        rc = 1
    except Exception as exc:
        say(f"failed: {type(exc).__name__}: {exc}")
        rc = 1
    finally:
        await cdh.close()
        await aa_client.close()
        if rc or cfg.get("show_logs"):
            for name in ("attestation-agent", "confidential-data-hub", "confidential-data-hub-deny"):
                p = Path(f"/run/{name}.log")
                if p.exists():
                    say(f"--- {name} log tail ---")
                    for line in p.read_text(errors="replace")[-2500:].splitlines():
                        say(f"  {line}")
        for proc in (cdh_proc, aa):
            proc.terminate()
    result("done", rc=rc, uptime=uptime())
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
