"""``cdh-oneshot``: call one CDH service once (a client of a running CDH).

    cdh-oneshot [--socket unix:///run/confidential-containers/cdh.sock] get-resource --resource-uri kbs:///a/b/c
    cdh-oneshot unseal-secret --secret-path /path/to/sealed-secret
    cdh-oneshot secure-mount --storage-path storage.json  # {"volume_type","options","flags","mount_point"}
    cdh-oneshot pull-image --image-url docker.io/library/busybox --bundle-path /run/bundle
    cdh-oneshot unwrap-key --input request.json

Resource / plaintext bytes go to stdout (or ``--output FILE``); errors to
stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from coco_rpc import (
    CDH_SOCKET,
    GET_RESOURCE_SERVICE,
    IMAGE_PULL_SERVICE,
    KEY_PROVIDER_SERVICE,
    SEALED_SECRET_SERVICE,
    SECURE_MOUNT_SERVICE,
    RpcError,
    connect,
)
from coco_rpc.protos import api_pb2, keyprovider_pb2

__all__ = ["main"]

MAX_INPUT_BYTES = 4 << 20


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"{path} is larger than {MAX_INPUT_BYTES} bytes")
    return data


async def _call(args: argparse.Namespace) -> bytes:
    client = connect(args.socket)
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
            spec = json.loads(_read(args.storage_path))
            req = api_pb2.SecureMountRequest(
                volume_type=spec["volume_type"],
                options=spec.get("options", {}),
                flags=spec.get("flags", []),
                mount_point=spec["mount_point"],
            )
            await client.call(
                SECURE_MOUNT_SERVICE, "SecureMount", req, api_pb2.SecureMountResponse, timeout=t
            )
            return b""
        if args.cmd == "pull-image":
            p = await client.call(
                IMAGE_PULL_SERVICE,
                "PullImage",
                api_pb2.ImagePullRequest(image_url=args.image_url, bundle_path=args.bundle_path),
                api_pb2.ImagePullResponse,
                timeout=t,
            )
            return (p.manifest_digest + "\n").encode()
        if args.cmd == "unwrap-key":
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
        raise ValueError(f"unknown command {args.cmd}")
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cdh-oneshot", description="Call one Confidential Data Hub service once"
    )
    ap.add_argument("--socket", "-s", default=CDH_SOCKET, help="CDH address (unix:///... or host:port)")
    ap.add_argument("--timeout", type=float, default=50.0)
    ap.add_argument("--output", "-o", type=Path, help="write the result here instead of stdout")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get-resource")
    g.add_argument("--resource-uri", required=True)
    u = sub.add_parser("unseal-secret")
    u.add_argument("--secret-path", type=Path, required=True)
    m = sub.add_parser("secure-mount")
    m.add_argument("--storage-path", type=Path, required=True)
    p = sub.add_parser("pull-image")
    p.add_argument("--image-url", required=True)
    p.add_argument("--bundle-path", required=True)
    p.add_argument("--timeout", type=float, default=1200.0, dest="timeout")
    k = sub.add_parser("unwrap-key")
    k.add_argument("--input", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        out = asyncio.run(_call(args))
    except RpcError as exc:
        print(f"cdh-oneshot: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"cdh-oneshot: {exc}", file=sys.stderr)
        return 1
    if args.output:
        fd = args.output.open("wb")
        with fd:
            fd.write(out)
    else:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
