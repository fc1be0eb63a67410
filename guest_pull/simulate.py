"""``coco-guest-pull simulate``: one pod through the whole guest-pull path on
loopback, with the real components as processes.

1. host side: the pod's containers (and its sandbox) become ``Storage``s the
   way the Kata runtime builds them with ``experimental_force_guest_pull``
   (there is no nydus snapshotter here); the ``cc_init_data`` annotation is
   decoded, digested and placed for the runtime class's TEE;
2. the reference ``kbs`` (insecure HTTP on 127.0.0.1, allow-all resource
   policy, seeded with registry credentials and extra resources),
   ``attestation-agent`` (with ``--initdata-toml`` when the pod has initdata,
   event log on) and ``confidential-data-hub`` start on a work directory;
3. agent side: the sandbox gets a (synthesised) pause bundle, every container
   is pulled by CDH ``PullImage`` through :class:`ImagePullHandler`; sealed
   environment values are unsealed through CDH.

Only runtime classes whose attester exists on this machine can be simulated
(``kata-qemu-coco-dev`` → ``sample`` on a machine without TEE hardware); asking
for ``kata-qemu-snp`` on such a machine is an error, not a pretend run.
Everything started is stopped, and rootfs overlay mounts are undone, before
returning.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from attestation.detect import detect_primary_tee
from attestation.initdata import ANNOTATION as INITDATA_ANNOTATION
from coco_common.files import read_bounded
from coco_common.http import sync_client
from guest_pull.agent import CdhClient, ImagePullHandler, unseal_env
from guest_pull.errors import GlueError
from guest_pull.host import (
    CONTAINER_TYPE_KEY,
    CRI_CONTAINER_TYPE,
    CRI_IMAGE_NAME,
    guest_pull_storages,
)
from guest_pull.initdata import decode_annotation_value, hypervisor_setting
from guest_pull.profiles import profile

__all__ = ["MAX_POD_BYTES", "MAX_SEED_BYTES", "read_seed", "simulate"]

MAX_POD_BYTES = 1 << 20
#: a file the simulation seeds into the KBS (``--auth-json``, ``--resource``)
MAX_SEED_BYTES = 8 << 20
START_TIMEOUT = 30.0


def _exe(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise GlueError(f"simulate: the {name!r} command is not installed")
    return found


def read_seed(path: Path, what: str) -> bytes:
    """A file to seed into the KBS, bounded; unreadable or too large is a :class:`GlueError`."""
    try:
        return read_bounded(path, MAX_SEED_BYTES)
    except OSError as exc:
        raise GlueError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # too large, or not a regular file
        raise GlueError(f"{what}: {exc}") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load_pod(path: Path) -> dict[str, Any]:
    try:
        raw = read_bounded(path, MAX_POD_BYTES)
    except OSError as exc:
        raise GlueError(f"pod: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # larger than MAX_POD_BYTES, or not a regular file
        raise GlueError(f"pod: {exc}") from exc
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
        why = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise GlueError(f"pod: {path} is not valid YAML{where}" + (f" ({why})" if why else "")) from exc
    if not isinstance(doc, dict) or doc.get("kind") != "Pod":
        raise GlueError("pod: the document must be a kind: Pod")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise GlueError("pod: spec.containers must be a non-empty list")
    for c in spec["containers"]:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("image"), str)
            or not isinstance(c.get("name"), str)
        ):
            raise GlueError("pod: every container needs a name and an image")
    return doc


class _Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        full = dict(os.environ)
        full.pop("AA_KBC_PARAMS", None)
        full.update(env or {})
        with log.open("wb") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise GlueError(
                f"simulate: {what} exited ({proc.returncode}): {log.read_text(errors='replace')[-500:]}"
            )
        time.sleep(0.05)
    raise GlueError(f"simulate: {what} did not create {path} in {START_TIMEOUT:.0f} s")


def _start_kbs(procs: _Procs, work: Path) -> str:
    port = _free_port()
    (work / "kbs").mkdir(parents=True, exist_ok=True)
    cfg = work / "kbs" / "kbs-config.toml"
    cfg.write_text(
        f'[http_server]\nsockets = ["127.0.0.1:{port}"]\ninsecure_http = true\n'
        '[admin]\nauthorization_mode = "InsecureAllowAll"\n'
        "[attestation_token]\n"
        '[attestation_service]\ntype = "coco_as_builtin"\n'
        f'[storage_backend]\nstorage_type = "LocalFs"\n[storage_backend.backends.local_fs]\n'
        f'dir_path = "{work / "kbs" / "storage"}"\n'
        '[[plugins]]\nname = "resource"\n'
        # the simulation has no TEE: it attests with the unsigned sample verifier, switched on here
        '[security]\ndev_verifiers = ["sample"]\n'
    )
    log = work / "kbs.log"
    proc = procs.start([_exe("kbs"), "--config-file", str(cfg)], log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    with sync_client(timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise GlueError(
                    f"simulate: kbs exited ({proc.returncode}): {log.read_text(errors='replace')[-500:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/healthz").status_code == 200:
                    return url
            if time.monotonic() > deadline:
                raise GlueError("simulate: kbs did not become healthy")
            time.sleep(0.1)


def _seed(url: str, resources: Mapping[str, bytes]) -> None:
    from kbs_protocol.policies import builtin_policy

    policy = base64.urlsafe_b64encode(builtin_policy("allow_all")).rstrip(b"=").decode()
    with sync_client(base_url=url) as c:
        r = c.post("/kbs/v0/resource-policy", json={"policy": policy})
        if r.status_code != 200:
            raise GlueError(f"simulate: setting the KBS resource policy failed ({r.status_code})")
        for path, data in resources.items():
            r = c.post(f"/kbs/v0/resource/{path.strip('/')}", content=data)
            if r.status_code != 200:
                raise GlueError(f"simulate: seeding KBS resource {path} failed ({r.status_code})")


def _annotations_for(pod: Mapping[str, Any], container: Mapping[str, Any] | None) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    ann = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    ann.pop(INITDATA_ANNOTATION, None)  # the runtime deletes it after processing
    ann["io.kubernetes.cri.sandbox-name"] = str(meta.get("name", "pod"))
    ann["io.kubernetes.cri.sandbox-namespace"] = str(meta.get("namespace", "default"))
    if container is None:
        ann[CRI_CONTAINER_TYPE] = "sandbox"
        ann[CONTAINER_TYPE_KEY] = "pod_sandbox"
    else:
        ann[CRI_CONTAINER_TYPE] = "container"
        ann[CONTAINER_TYPE_KEY] = "pod_container"
        ann[CRI_IMAGE_NAME] = str(container["image"])
        ann["io.kubernetes.cri.container-name"] = str(container["name"])
    return ann


def _pause_bundle(work: Path) -> Path:
    b = work / "pause_bundle"
    (b / "rootfs").mkdir(parents=True, exist_ok=True)
    (b / "config.json").write_text(
        json.dumps({"ociVersion": "1.1.0", "process": {"args": ["/pause"], "cwd": "/"}})
    )
    # a stand-in: the simulation never runs the sandbox process
    (b / "rootfs" / "pause").write_bytes(b"#!/bin/sh\nexec sleep infinity\n")
    (b / "rootfs" / "pause").chmod(0o755)
    return b


def _unmount_all(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    for rootfs in run_dir.glob("*/rootfs"):
        if rootfs.is_mount():
            subprocess.run(["umount", str(rootfs)], capture_output=True, check=False)


def _cid(pod_name: str, name: str) -> str:
    return hashlib.sha256(f"{pod_name}/{name}".encode()).hexdigest()


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    tmp = Path(tempfile.mkdtemp(prefix="coco-sim-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def simulate(
    runtime_class: str,
    pod_path: Path,
    *,
    workdir: Path | None = None,
    insecure_registries: Sequence[str] = (),
    auth_json: Path | None = None,
    resources: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    prof = profile(runtime_class)
    pod = _load_pod(pod_path)
    spec_class = (pod.get("spec") or {}).get("runtimeClassName")
    if spec_class not in (None, runtime_class):
        raise GlueError(f"pod: spec.runtimeClassName is {spec_class!r}, not {runtime_class!r}")
    here = detect_primary_tee()
    if here != prof.primary_attester:
        raise GlueError(
            f"runtime class {runtime_class} needs the {prof.primary_attester} attester; "
            f"this machine offers {here}, so it cannot be simulated here"
        )
    pod_name = str((pod.get("metadata") or {}).get("name", "pod"))
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    result: dict[str, Any] = {"runtime_class": runtime_class, "primary_attester": here}
    seed: dict[str, bytes] = dict(resources or {})
    if auth_json is not None:
        seed["default/credential/simulate"] = read_seed(auth_json, "--auth-json")

    with _workdir(workdir) as work:
        procs = _Procs()
        run_dir = work / "run"
        try:
            init_toml: Path | None = None
            if INITDATA_ANNOTATION in annotations:
                decoded = decode_annotation_value(str(annotations[INITDATA_ANNOTATION]))
                init_toml = work / "initdata.toml"
                init_toml.write_bytes(decoded.initdata.raw)
                result["initdata"] = {
                    "algorithm": decoded.initdata.algorithm,
                    "digest": decoded.initdata.digest().hex(),
                    "data": sorted(decoded.initdata.data),
                    "placement": hypervisor_setting(decoded.initdata, prof.tee) if prof.tee else None,
                }
            t0 = time.monotonic()
            kbs_url = _start_kbs(procs, work)
            _seed(kbs_url, seed)
            aa_sock, cdh_sock = work / "aa.sock", work / "cdh.sock"
            (work / "aa.toml").write_text(
                f'[token_configs.kbs]\nurl = "{kbs_url}"\n[eventlog_config]\nenable_eventlog = true\n'
            )
            aa_cmd = [_exe("attestation-agent"), "-a", f"unix://{aa_sock}", "-c", str(work / "aa.toml")]
            if init_toml is not None:
                aa_cmd += ["-t", str(init_toml)]
            aa = procs.start(aa_cmd, work / "aa.log", {"AAEL_PATH": str(work / "eventlog" / "eventlog")})
            _wait_socket(aa_sock, aa, "attestation-agent", work / "aa.log")
            image_cfg = f'[image]\nwork_dir = "{work / "image"}"\n'
            if auth_json is not None:
                image_cfg += 'authenticated_registry_credentials_uri = "kbs:///default/credential/simulate"\n'
            for host in insecure_registries:
                image_cfg += (
                    f'[[image.registry_config.registry]]\nprefix = "{host}"\nlocation = "{host}"\n'
                    "insecure = true\n"
                )
            (work / "cdh.toml").write_text(
                f'socket = "unix://{cdh_sock}"\n[aa]\naa_socket = "unix://{aa_sock}"\n'
                f'[kbc]\nname = "cc_kbc"\nurl = "{kbs_url}"\n{image_cfg}'
            )
            cdh = procs.start(
                [_exe("confidential-data-hub"), "-c", str(work / "cdh.toml")],
                work / "cdh.log",
                {"OCICRYPT_KEYPROVIDER_CONFIG": str(work / "ocicrypt.json")},
            )
            _wait_socket(cdh_sock, cdh, "confidential-data-hub", work / "cdh.log")
            result["started_in_s"] = round(time.monotonic() - t0, 2)
            result["containers"] = asyncio.run(_agent_side(pod, pod_name, work, run_dir, cdh_sock))
            log_path = work / "eventlog" / "eventlog"
            result["eventlog_bytes"] = log_path.stat().st_size if log_path.exists() else 0
        finally:
            _unmount_all(run_dir)
            procs.stop_all()
    return result


async def _agent_side(
    pod: Mapping[str, Any], pod_name: str, work: Path, run_dir: Path, cdh_sock: Path
) -> list[dict[str, Any]]:
    client = CdhClient(f"unix://{cdh_sock}")
    handler = ImagePullHandler(client, run_dir=run_dir, pause_bundle=_pause_bundle(work))
    out: list[dict[str, Any]] = []
    entries: list[tuple[str, Mapping[str, Any] | None]] = [("pause", None)]
    entries += [(str(c["name"]), c) for c in pod["spec"]["containers"]]
    for name, container in entries:
        cid = _cid(pod_name, name)
        ann = _annotations_for(pod, container)
        (storage,) = guest_pull_storages(cid, ann, [], force_guest_pull=True)
        t0 = time.monotonic()
        rootfs = await handler.create_device(storage, cid)
        item: dict[str, Any] = {
            "name": name,
            "container_id": cid,
            "storage": storage.to_json(),
            "rootfs": str(rootfs),
            "manifest_digest": handler.digests.get(cid),
            "seconds": round(time.monotonic() - t0, 2),
            "rootfs_entries": sorted(p.name for p in rootfs.iterdir())[:50],
        }
        if container is not None:
            env = [
                f"{e['name']}={e.get('value', '')}" for e in container.get("env") or [] if isinstance(e, dict)
            ]
            unsealed = await unseal_env(client, env)
            item["env_unsealed"] = [e.split("=", 1)[0] for e, u in zip(env, unsealed, strict=True) if e != u]
        out.append(item)
    return out
