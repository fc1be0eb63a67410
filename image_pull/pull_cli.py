"""``coco-image pull REF --bundle DIR``: pull an image into an OCI bundle.

Prints the manifest digest (``sha256:...``) on stdout. On failure: exit status
1 and one line ``coco-image pull: <reason>`` on stderr. Progress goes to
stderr (a rewritten status line on a TTY, otherwise nothing unless -v).

Without ``--policy`` no signature policy is enforced (the documented default,
as image-rs with signature verification disabled), and a warning says so on
stderr; ``--require-signature`` refuses such a pull (exit 2). Pass a
containers-policy.json to require signatures (``image_pull.trust``). ``--registries-d DIR`` says where
simple signatures live (lookaside) and whether cosign attachments are read.
``--decryption-key PEM`` (repeatable) decrypts ocicrypt JWE-wrapped layers
(``image_pull.ocicrypt``); an encrypted image without a fitting key is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from coco_common.files import FileTooLarge, read_bounded
from image_pull.errors import ImagePullError
from image_pull.progress import ProgressEvent, TtyProgress
from image_pull.registries_conf import ProxyConfig, RegistryConfig

if TYPE_CHECKING:
    from image_pull.hooks import PolicyCheck
    from image_pull.ocicrypt import LayerDecrypter

__all__ = ["configure", "run"]

MAX_INPUT_FILE = 4 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="REF", help="image reference, e.g. registry.example/ns/app:1")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (rootfs/ + config.json)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/run/kata-containers/image"),
        help="layer store (default: %(default)s)",
    )
    parser.add_argument("--auth-file", type=Path, help="containers auth.json with registry credentials")
    parser.add_argument("--ca-file", type=Path, action="append", default=[], help="extra root CA (PEM)")
    parser.add_argument(
        "--plain-http",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="registry reachable over plain HTTP",
    )
    parser.add_argument("--registries-conf", type=Path, help="registries.conf (v2 subset) TOML")
    parser.add_argument(
        "--policy", type=Path, help="containers-policy.json to enforce (without it no signature is checked)"
    )
    parser.add_argument(
        "--require-signature",
        action="store_true",
        help="refuse to pull without --policy (no unverified images)",
    )
    parser.add_argument("--registries-d", type=Path, help="registries.d directory (signature lookaside)")
    parser.add_argument("--decryption-key", type=Path, action="append", default=[], help="PEM private key")
    parser.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    parser.add_argument("--max-concurrent-layers", type=int, default=3)
    parser.add_argument("--snapshotter", choices=("auto", "overlay", "copy"), default="auto")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds for the whole pull (default 1800)"
    )
    parser.add_argument(
        "--low-speed-limit",
        type=int,
        default=1024,
        metavar="BYTES",
        help="a response slower than BYTES/s for --low-speed-time seconds fails (default 1024; 0: off)",
    )
    parser.add_argument(
        "--max-unpacked-bytes",
        type=int,
        metavar="BYTES",
        help="uncompressed bytes one pull may write (default: the work dir's free space)",
    )
    parser.add_argument("--low-speed-time", type=float, default=30.0, metavar="SECONDS", help="(default 30)")
    parser.add_argument("--https-proxy")
    parser.add_argument("--http-proxy")
    parser.add_argument("--no-proxy", default="", help="comma-separated hosts/domains reached directly")
    parser.add_argument("-v", "--verbose", action="store_true", help="structured progress logs on stderr")


def _read(path: Path, what: str) -> bytes:
    try:
        return read_bounded(path, MAX_INPUT_FILE)
    except FileTooLarge as exc:
        raise ImagePullError(f"{what} {path} is larger than 4 MiB") from exc
    except ValueError as exc:  # not a regular file
        raise ImagePullError(f"cannot read {what} {path}: not a regular file") from exc
    except OSError as exc:
        raise ImagePullError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _log_progress(ev: ProgressEvent) -> None:
    logging.getLogger("image_pull.progress").info(
        "event=%s layer=%s digest=%s bytes=%d total=%d rate=%.0f elapsed=%.2f %s",
        ev.kind,
        ev.layer,
        ev.digest,
        ev.bytes,
        ev.total,
        ev.rate,
        ev.elapsed,
        ev.message,
    )


def _policy(args: argparse.Namespace) -> PolicyCheck | None:
    """--policy parsed now: a bad policy fails before the registry is contacted."""
    if args.policy is None:
        return None
    from image_pull.trust import InvalidPolicy, TrustPolicy

    try:
        return TrustPolicy(_read(args.policy, "policy"), registries_d=args.registries_d)
    except InvalidPolicy as exc:
        raise InvalidPolicy(f"--policy {args.policy}: {exc}") from exc


def _decrypter(args: argparse.Namespace) -> LayerDecrypter | None:
    """--decryption-key files loaded now: a bad key fails here, not at the first encrypted layer."""
    if not args.decryption_key:
        return None
    from image_pull.ocicrypt import LayerDecrypter

    return LayerDecrypter(tuple(_read(p, "decryption key") for p in args.decryption_key))


async def _main(args: argparse.Namespace) -> int:
    from image_pull.puller import ImagePuller, PullerConfig
    from image_pull.registry import RetryPolicy

    proxy = None
    if args.https_proxy or args.http_proxy:
        proxy = ProxyConfig.from_list(args.https_proxy, args.http_proxy, args.no_proxy)
    config = PullerConfig(
        work_dir=args.work_dir,
        auth_json=_read(args.auth_file, "auth file") if args.auth_file else None,
        extra_root_certs=tuple(_read(p, "CA file") for p in args.ca_file),
        insecure_registries=frozenset(args.plain_http),
        registry_config=RegistryConfig.from_toml(_read(args.registries_conf, "registries.conf"))
        if args.registries_conf
        else None,
        proxy=proxy,
        max_concurrent_layers=args.max_concurrent_layers,
        signature_policy=_policy(args),
        decrypter=_decrypter(args),
        platform=args.platform,
        snapshotter=args.snapshotter,
        pull_timeout=args.timeout,
        max_unpacked_bytes=args.max_unpacked_bytes,
        retry=RetryPolicy(low_speed_limit=args.low_speed_limit, low_speed_time=args.low_speed_time),
    )
    sinks: list[Callable[[ProgressEvent], None]] = []
    if sys.stderr.isatty():
        sinks.append(TtyProgress(sys.stderr))
    if args.verbose:
        sinks.append(_log_progress)

    def progress(ev: ProgressEvent) -> None:
        for s in sinks:
            s(ev)

    async with ImagePuller(config) as puller:
        result = await puller.pull(args.image, args.bundle, progress=progress)
    print(result.manifest_digest)
    print(
        f"pulled {result.image_ref}: {result.layers} layers ({result.layers_cached} cached), "
        f"{result.bytes_downloaded / 1e6:.1f} MB in {result.seconds:.2f} s -> {result.rootfs}",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.policy is None:
        if args.require_signature:
            print(
                "coco-image pull: --require-signature needs --policy containers-policy.json "
                "(refusing to pull without checking signatures)",
                file=sys.stderr,
            )
            return 2
        print(
            "coco-image pull: WARNING: no --policy: image signatures are NOT verified "
            "(pass --policy containers-policy.json; --require-signature makes this an error)",
            file=sys.stderr,
        )
    try:
        return asyncio.run(_main(args))
    except ImagePullError as exc:
        print(f"coco-image pull: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"coco-image pull: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coco-image pull: interrupted", file=sys.stderr)
        return 130
