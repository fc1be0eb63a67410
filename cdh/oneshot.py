"""``cdh-oneshot``: run one CDH operation once.

Upstream-compatible by default: builds the hub in process from ``-c
cdh.toml`` (or the kernel command line), retries ``-r`` times, and prints
base64 of the result (``get-resource``, ``unseal-secret``, ``unwrap-key``),
``mount path: <p>`` or ``image digest: <d>``. With ``--socket`` it is instead
a client of a running CDH (ttRPC for ``unix://``, gRPC for host:port).
``-o FILE`` writes the raw result bytes to FILE instead of printing base64.

    cdh-oneshot [-c cdh.toml] [-r 3] get-resource -r kbs:///a/b/c
    cdh-oneshot --socket unix:///run/confidential-containers/cdh.sock unseal-secret -s sealed.txt
    cdh-oneshot secure-mount --storage-path storage.json  # {"volume_type","options","flags","mount_point"}
    cdh-oneshot pull-image -i docker.io/library/busybox -b /run/bundle
    cdh-oneshot unwrap-key -a keyprovider-input.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdh.config import load_config
from cdh.errors import CdhError, SecureMountError
from cdh.files import read_limited
from cdh.hub import Hub
from coco_common.b64 import b64_encode
from coco_common.cli import add_log_options, add_version, configure_logging
from coco_common.strict_json import strict_object
from coco_rpc import (
    GET_RESOURCE_SERVICE,
    IMAGE_PULL_SERVICE,
    KEY_PROVIDER_SERVICE,
    SEALED_SECRET_SERVICE,
    SECURE_MOUNT_SERVICE,
    RpcClient,
    RpcError,
    connect,
)
from coco_rpc.protos import api_pb2, keyprovider_pb2

__all__ = ["main"]

log = logging.getLogger("cdh-oneshot")

MAX_INPUT_BYTES = 4 << 20


def _read(path: Path) -> bytes:
    return read_limited(path, MAX_INPUT_BYTES)


def _storage(path: Path) -> dict[str, Any]:
    spec = strict_object(_read(path), error=SecureMountError, what=f"storage file {path}")
    if not isinstance(spec.get("volume_type"), str):
        raise SecureMountError(
            "storage file must be a JSON object with volume_type, options, flags, mount_point"
        )
    return spec


async def _remote(args: argparse.Namespace) -> bytes:
    client: RpcClient = connect(args.socket)
    t = args.timeout
    try:
        if args.cmd == "get-resource":
            r = await client.call(
                GET_RESOURCE_SERVICE,
                "GetResource",
                api_pb2.GetResourceRequest(ResourcePath=args.resource_uri),
                api_pb2.GetResourceResponse,
                timeout=t,
            )
            return r.Resource
        if args.cmd == "unseal-secret":
            s = await client.call(
                SEALED_SECRET_SERVICE,
                "UnsealSecret",
                api_pb2.UnsealSecretInput(secret=_read(args.secret_path).strip()),
                api_pb2.UnsealSecretOutput,
                timeout=t,
            )
            return s.plaintext
        if args.cmd == "secure-mount":
            spec = _storage(args.storage_path)
            req = api_pb2.SecureMountRequest(
                volume_type=spec["volume_type"],
                options=spec.get("options", {}),
                flags=spec.get("flags", []),
                mount_point=spec.get("mount_point", ""),
            )
            await client.call(
                SECURE_MOUNT_SERVICE, "SecureMount", req, api_pb2.SecureMountResponse, timeout=t
            )
            return req.mount_point.encode()
        if args.cmd == "pull-image":
            p = await client.call(
                IMAGE_PULL_SERVICE,
                "PullImage",
                api_pb2.ImagePullRequest(image_url=args.image_url, bundle_path=args.bundle_path),
                api_pb2.ImagePullResponse,
                timeout=max(t, 1200.0),
            )
            return p.manifest_digest.encode()
        k = await client.call(
            KEY_PROVIDER_SERVICE,
            "UnWrapKey",
            keyprovider_pb2.KeyProviderKeyWrapProtocolInput(
                KeyProviderKeyWrapProtocolInput=_read(args.input)
            ),
            keyprovider_pb2.KeyProviderKeyWrapProtocolOutput,
            timeout=t,
        )
        return k.KeyProviderKeyWrapProtocolOutput
    finally:
        await client.close()


async def _local(args: argparse.Namespace) -> bytes:
    cfg = load_config(args.config)
    hub = Hub(cfg)
    try:
        for attempt in range(1, args.retry + 2):
            try:
                if args.cmd == "get-resource":
                    return await hub.get_resource(args.resource_uri)
                if args.cmd == "unseal-secret":
                    return await hub.unsealer.unseal(_read(args.secret_path).strip())
                if args.cmd == "unwrap-key":
                    return await hub.key_unwrapper.handle_request(_read(args.input))
                if args.cmd == "secure-mount":
                    spec = _storage(args.storage_path)
                    await hub.mounter.secure_mount(
                        spec["volume_type"], spec.get("options", {}), spec.get("mount_point", "")
                    )
                    return str(spec.get("mount_point", "")).encode()
                return (await hub.images.pull(args.image_url, args.bundle_path)).encode()
            except CdhError as exc:
                if args.cmd in ("secure-mount", "pull-image") or attempt > args.retry:
                    raise
                log.warning("Tried %d times... %s failed: %s", attempt, args.cmd, exc)
        raise AssertionError("unreachable")
    finally:
        await hub.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cdh-oneshot", description="Run one Confidential Data Hub operation once"
    )
    ap.add_argument("-c", "--config", type=Path, help="CDH config (in-process mode; default: kernel cmdline)")
    ap.add_argument("-r", "--retry", type=int, default=3, help="retries (in-process mode; default 3)")
    ap.add_argument(
        "--socket", "-S", help="call a running CDH at this address instead (unix:///... or host:port)"
    )
    ap.add_argument("--timeout", type=float, default=50.0, help="RPC timeout in seconds (--socket mode)")
    ap.add_argument("--output", "-o", type=Path, help="write the raw result here instead of printing it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get-resource", help="Get Resource from KBS")
    g.add_argument("-r", "--resource-uri", required=True, help="kbs:///repo/type/tag")
    u = sub.add_parser("unseal-secret", help="Unseal the given sealed secret")
    u.add_argument("-s", "--secret-path", type=Path, required=True)
    m = sub.add_parser("secure-mount", help="Secure mount")
    m.add_argument("-s", "--storage-path", type=Path, required=True)
    p = sub.add_parser("pull-image", help="Pull image")
    p.add_argument("-i", "--image-url", required=True)
    p.add_argument("-b", "--bundle-path", required=True)
    k = sub.add_parser("unwrap-key", help="Unwrap the image encryption key")
    k.add_argument("-a", "--annotation-path", "--input", type=Path, required=True, dest="input")
    add_version(ap)
    add_log_options(ap, default_format="plain")
    args = ap.parse_args(argv)
    configure_logging(args, default_level="WARNING")
    if not args.socket and not args.config:
        log.warning(
            "no -c/--socket: running in-process with the KBC from the kernel command line "
            "(agent.aa_kbc_params; offline_fs_kbc when it is absent). To ask the running CDH, "
            "pass --socket unix:///run/confidential-containers/cdh.sock"
        )
    try:
        out = asyncio.run(_remote(args) if args.socket else _local(args))
    except RpcError as exc:
        print(f"cdh-oneshot: {exc.message}", file=sys.stderr)
        return 1
    except (CdhError, OSError, ValueError, KeyError) as exc:
        print(f"cdh-oneshot: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with args.output.open("wb") as f:
            f.write(out)
    elif args.cmd == "secure-mount":
        print(f"mount path: {out.decode()}")
    elif args.cmd == "pull-image":
        print(f"image digest: {out.decode()}")
    else:
        print(b64_encode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
