"""``coco-guest-pull``: the Kata guest-pull glue from the command line.

    coco-guest-pull host-storage --container-id ID --annotations FILE.json \\
        [--mount-option OPT ...] [--force-guest-pull] [--protobuf]
    coco-guest-pull agent-storage --container-id ID --storage STORAGE.json [--cdh ADDR] ...
    coco-guest-pull initdata --annotation-file F [--image OUT] [--tee snp|tdx|cca] [--extract DIR]
    coco-guest-pull kernel-params [--cmdline-file F | TEXT]
    coco-guest-pull profiles [NAME]
    coco-guest-pull simulate --runtime-class NAME POD.yaml

Results are JSON on stdout; errors go to stderr as ``coco-guest-pull: error: …``
with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attestation.errors import AttestationError
from coco_common.cli import add_version
from coco_common.files import read_bounded
from coco_common.strict_json import strict_object
from guest_pull.errors import AgentError, GlueError, PullFailed

__all__ = ["build_parser", "main", "run"]


def _print(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _host_storage(args: argparse.Namespace) -> int:
    from guest_pull.errors import HostStorageError
    from guest_pull.host import guest_pull_storages, load_annotations

    annotations = load_annotations(args.annotations)
    sandbox = load_annotations(args.sandbox_annotations) if args.sandbox_annotations else None
    storages = guest_pull_storages(
        args.container_id,
        annotations,
        args.mount_option or [],
        force_guest_pull=args.force_guest_pull,
        sandbox_annotations=sandbox,
    )
    if not storages:
        raise HostStorageError(
            "not a guest-pull container: no io.katacontainers.volume image_guest_pull option "
            "and experimental_force_guest_pull is off"
        )
    docs = []
    for s in storages:
        doc = s.to_json()
        if args.protobuf:
            doc["protobuf_b64"] = base64.b64encode(s.to_protobuf()).decode()
        docs.append(doc)
    _print(docs[0] if len(docs) == 1 else docs)
    return 0


def _agent_storage(args: argparse.Namespace) -> int:
    from guest_pull.agent import CdhClient, ImagePullHandler
    from guest_pull.storage import Storage

    try:
        raw = read_bounded(args.storage, 1 << 20)
    except (OSError, ValueError) as exc:  # unreadable, too large, or not a regular file
        raise AgentError(f"--storage: cannot read a JSON Storage: {exc}") from exc
    doc = strict_object(raw, error=AgentError, what="--storage: not a JSON Storage")
    storage = Storage.from_json(doc)
    timeout = args.timeout
    if timeout is None:
        from guest_pull.kernel_params import read_kernel_params

        timeout = read_kernel_params(args.cmdline_file).image_pull_timeout if args.cmdline_file else 1200.0
    handler = ImagePullHandler(
        CdhClient(args.cdh),
        run_dir=Path(args.run_dir),
        pause_bundle=Path(args.pause_bundle),
        image_pull_timeout=float(timeout),
    )
    rootfs = asyncio.run(handler.create_device(storage, args.container_id))
    _print({"rootfs": str(rootfs)})
    return 0


def _initdata(args: argparse.Namespace) -> int:
    from guest_pull.initdata import extract, read_annotation_file, summary

    decoded = read_annotation_file(args.annotation_file)
    out = summary(decoded, args.tee)
    if args.image:
        Path(args.image).write_bytes(decoded.image())
        out["image"] = args.image
    if args.extract:
        out["extracted"] = sorted(extract(decoded.initdata, Path(args.extract)))
    _print(out)
    return 0


def _kernel_params(args: argparse.Namespace) -> int:
    from guest_pull.kernel_params import parse_kernel_params, read_kernel_params

    params = (
        read_kernel_params(args.cmdline_file) if args.cmdline_file else parse_kernel_params(args.text or "")
    )
    doc = dataclasses.asdict(params)
    doc["unknown"] = list(params.unknown)
    _print(doc)
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from guest_pull.profiles import PROFILES, profile

    if args.name:
        _print(dataclasses.asdict(profile(args.name)))
    else:
        _print({name: dataclasses.asdict(p) for name, p in PROFILES.items()})
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from guest_pull.simulate import read_seed, simulate

    resources: dict[str, bytes] = {}
    for item in args.resource or []:
        path, sep, file = item.partition("=")
        if not sep or not path or not file:
            raise GlueError(f"--resource {item!r}: want REPO/TYPE/TAG=FILE")
        resources[path] = read_seed(Path(file), f"--resource {path}")
    _print(
        simulate(
            args.runtime_class,
            Path(args.pod),
            workdir=Path(args.workdir) if args.workdir else None,
            insecure_registries=args.insecure_registry or [],
            auth_json=Path(args.auth_json) if args.auth_json else None,
            resources=resources,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coco-guest-pull", description="Kata guest-pull glue")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True)

    h = sub.add_parser("host-storage", help="the Storage the Kata runtime sends for a container")
    h.add_argument("--container-id", required=True)
    h.add_argument("--annotations", required=True, help="JSON object of the container's OCI annotations")
    h.add_argument(
        "--sandbox-annotations", help="JSON object of the sandbox's annotations (default: --annotations)"
    )
    h.add_argument("--mount-option", action="append", help="rootfs mount option (repeatable)")
    h.add_argument("--force-guest-pull", action="store_true", help="runtime experimental_force_guest_pull")
    h.add_argument("--protobuf", action="store_true", help="also print the protobuf wire bytes (base64)")
    h.set_defaults(func=_host_storage)

    a = sub.add_parser("agent-storage", help="handle a Storage as kata-agent does (pause bundle or CDH pull)")
    a.add_argument("--container-id", required=True)
    a.add_argument("--storage", required=True, help="Storage JSON as host-storage prints it")
    a.add_argument("--cdh", default="unix:///run/confidential-containers/cdh.sock")
    a.add_argument("--run-dir", default="/run/kata-containers")
    a.add_argument("--pause-bundle", default="/pause_bundle")
    a.add_argument(
        "--timeout", type=float, help="PullImage timeout in seconds (default: agent.image_pull_timeout)"
    )
    a.add_argument("--cmdline-file", help="kernel command line to read agent.image_pull_timeout from")
    a.set_defaults(func=_agent_storage)

    i = sub.add_parser("initdata", help="decode, digest and place the cc_init_data annotation")
    i.add_argument("--annotation-file", required=True)
    i.add_argument("--image", help="write the initdata block-device image here")
    i.add_argument("--tee", choices=["snp", "tdx", "cca"], help="also show the digest placement for this TEE")
    i.add_argument(
        "--extract", help="write initdata.toml, aa.toml, cdh.toml, policy.rego into this directory"
    )
    i.set_defaults(func=_initdata)

    k = sub.add_parser("kernel-params", help="parse CoCo-relevant kernel/agent parameters")
    k.add_argument("--cmdline-file", help="e.g. /proc/cmdline")
    k.add_argument("text", nargs="?", help="the command line text")
    k.set_defaults(func=_kernel_params)

    r = sub.add_parser("profiles", help="CoCo runtime-class profiles")
    r.add_argument("name", nargs="?")
    r.set_defaults(func=_profiles)

    s = sub.add_parser("simulate", help="host side, agent side, CDH, AA and the reference KBS on loopback")
    s.add_argument("--runtime-class", required=True)
    s.add_argument("--workdir", help="keep the simulation's files here")
    s.add_argument(
        "--insecure-registry", action="append", help="HOST[:PORT] served over plain HTTP (repeatable)"
    )
    s.add_argument("--auth-json", help="registry credentials (auth.json) for CDH, served by the KBS")
    s.add_argument("--resource", action="append", help="extra KBS resource REPO/TYPE/TAG=FILE (repeatable)")
    s.add_argument("pod", help="pod YAML")
    s.set_defaults(func=_simulate)
    return p


def _registry(image: str) -> str:
    """The registry host[:port] of an image reference (docker's rule: the first
    component when it has a dot or a colon, or is ``localhost``)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first[:100]
    return "docker.io"


def _flag_hint(args: argparse.Namespace, exc: Exception) -> str:
    """CDH's pull error names coco-image's flags (``--plain-http``); ``simulate``
    configures plain HTTP with ``--insecure-registry``: name it for a failed pull
    from a registry the simulation reached over TLS."""
    if args.func is not _simulate or not isinstance(exc, PullFailed):
        return ""
    host = _registry(exc.image)
    if host in (args.insecure_registry or []):
        return ""
    return f" [in coco-guest-pull simulate: --insecure-registry {host} for a registry without TLS]"


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except (GlueError, AttestationError) as exc:
        sys.stderr.write(f"coco-guest-pull: error: {exc}{_flag_hint(args, exc)}\n")
        # 2: the input or the arguments are wrong; 1: an operation (a CDH call, a pull) failed
        from coco_rpc import RpcError

        failed_call = isinstance(exc, AgentError) and isinstance(exc.__cause__, RpcError)
        return 1 if failed_call else 2


def main() -> None:
    sys.exit(run())
