"""``kbs-client``: trustee's command-line client (reference §10).

``attest`` and ``get-resource`` collect evidence as upstream's
``NativeEvidenceProvider``: the TEE this machine runs in (detected by
:mod:`attestation.detect`, imported only for these commands) plus its
attestable devices; the ``sample`` evidence (development only, with a warning)
only where no TEE is found or :mod:`attestation` is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from coco_common.b64 import b64_encode
from coco_common.cli import add_version, exit_on_closed_pipe, rust_log_level
from coco_common.http import async_client
from kbs_protocol.errors import KbsProtocolError
from kbs_protocol.policies import builtin_policy

from .admin import AdminAuth, AdminClient, Anonymous, BearerToken, Ed25519Signer
from .errors import KbsClientError, TransportError
from .rcar import Attestation, EvidenceSource, attest
from .resources import ResourceClient, get_resource
from .tee_key import TeeKeyPair

__all__ = ["build_parser", "evidence_source", "main"]

log = logging.getLogger("kbs_client")

MAX_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_TOKEN_PATHS = ("kbs/config/docker-compose/admin-token", "~/.trustee/admin-token")


def _url(value: str) -> str:
    """``--url``: checked here (exit 2), not after five connection attempts."""
    try:
        u = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"{value[:200]!r} is not a URL ({exc})") from exc
    if u.scheme not in ("http", "https") or not u.host:
        raise argparse.ArgumentTypeError(
            f"{value[:200]!r} is not an http:// or https:// URL with a host (e.g. https://kbs.example:8080)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kbs-client", description="Client for a trustee-compatible KBS.")
    add_version(p)
    p.add_argument(
        "--url", type=_url, default="http://127.0.0.1:8080", help="KBS root URL (default: %(default)s)"
    )
    p.add_argument("--cert-file", help="PEM root CA of the KBS's HTTPS certificate")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attest", help="attest and print the token")
    a.add_argument("--tee-key-file", help="TEE private key PEM (RSA PKCS#1 or EC PKCS#8)")
    a.add_argument("init_data", nargs="?", metavar="INIT_DATA", help="init-data TOML text")

    g = sub.add_parser("get-resource", help="fetch a resource, print base64 of it")
    g.add_argument("--path", required=True, help="repo/type/tag or kbs:///repo/type/tag")
    g.add_argument("--tee-key-file")
    g.add_argument("--attestation-token", help="file with a token (passport mode; needs --tee-key-file)")
    g.add_argument("init_data", nargs="?", metavar="INIT_DATA")

    c = sub.add_parser("config", help="admin operations")
    auth = c.add_mutually_exclusive_group()
    auth.add_argument(
        "--admin-token-file",
        help="bearer admin token, a JWT (trustee >= v0.21); default: the first of "
        + ", ".join(DEFAULT_TOKEN_PATHS)
        + " that exists",
    )
    auth.add_argument("--auth-private-key", help="Ed25519 private key PEM (kbs-client <= v0.20)")
    cs = c.add_subparsers(dest="config_command", required=True)

    sap = cs.add_parser("set-attestation-policy")
    sap.add_argument("--policy-file", required=True)
    sap.add_argument("--type", default="rego", dest="policy_type")
    sap.add_argument("--id", default="default_cpu", dest="policy_id")

    srp = cs.add_parser("set-resource-policy")
    grp = srp.add_mutually_exclusive_group(required=True)
    grp.add_argument("--policy-file")
    grp.add_argument("--allow-all", action="store_true")
    grp.add_argument("--deny-all", action="store_true")
    grp.add_argument("--affirming", action="store_true")
    grp.add_argument("--default", action="store_true", help="(as trustee's kbs-client: uploads deny-all)")

    grp_ = cs.add_parser("get-resource-policy", help="print the resource policy the KBS enforces (Rego)")
    grp_.add_argument("--id", default="resource-policy", dest="policy_id", help="(default: %(default)s)")
    gap = cs.add_parser("get-attestation-policy", help="print an attestation policy (Rego)")
    gap.add_argument("--id", default="default_cpu", dest="policy_id", help="(default: %(default)s)")

    sr = cs.add_parser("set-resource")
    sr.add_argument("--path", required=True)
    sr.add_argument("--resource-file", required=True)

    dr = cs.add_parser("delete-resource")
    dr.add_argument("--path", required=True)

    grv = cs.add_parser("get-reference-value")
    grv.add_argument("--id", required=True, dest="ref_id")

    ssr = cs.add_parser("set-sample-reference-value")
    ssr.add_argument("name")
    ssr.add_argument("value")
    kind = ssr.add_mutually_exclusive_group()
    kind.add_argument("--as-integer", action="store_true")
    kind.add_argument("--as-bool", action="store_true")
    ssr.add_argument("--as-single-value", action="store_true")
    return p


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _read(path: str, what: str) -> bytes:
    """``what`` names the flag (``--policy-file``): every error names flag and file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KbsClientError(f"{what} {path}: {_os_reason(exc)}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise KbsClientError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _tls_context(cert_file: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cert_file)
    except ssl.SSLError as exc:
        raise KbsClientError(f"--cert-file {cert_file}: no PEM certificate in file") from exc
    except OSError as exc:
        raise KbsClientError(f"--cert-file {cert_file}: {_os_reason(exc)}") from exc


def _http(args: argparse.Namespace) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if args.cert_file:
        verify = _tls_context(args.cert_file)
    # a command-line tool: the operator's proxy variables apply, as they do to upstream's kbs-client
    return async_client(
        verify=verify, timeout=60.0, headers={"User-Agent": "kbs-client-py/0.1"}, trust_env=True
    )


def _admin_auth(args: argparse.Namespace) -> AdminAuth:
    if args.auth_private_key:
        return Ed25519Signer.from_pem(_read(args.auth_private_key, "--auth-private-key"))
    if args.admin_token_file:
        path = args.admin_token_file
        return BearerToken.from_bytes(_read(path, "--admin-token-file"), path)
    for cand in DEFAULT_TOKEN_PATHS:
        p = Path(cand).expanduser()
        if p.is_file():
            log.info("admin token: %s", p)
            return BearerToken.from_bytes(_read(str(p), "admin token"), str(p))
    log.warning(
        "no admin token given or found (--admin-token-file, --auth-private-key, %s); "
        "sending the request anonymously",
        ", ".join(DEFAULT_TOKEN_PATHS),
    )
    return Anonymous()


def _ref_value(args: argparse.Namespace) -> Any:
    value: Any = args.value
    if args.as_integer:
        try:
            value = int(args.value)
        except ValueError as exc:
            raise KbsClientError("VALUE is not an integer") from exc
    elif args.as_bool:
        if args.value.lower() not in ("true", "false"):
            raise KbsClientError("VALUE is not true or false")
        value = args.value.lower() == "true"
    return value if args.as_single_value else [value]


class _NativeSource:
    """An evidence source whose collection failures are :class:`KbsClientError`."""

    def __init__(self, inner: EvidenceSource, errors: tuple[type[Exception], ...]) -> None:
        self.tee = inner.tee
        self._inner = inner
        self._errors = errors

    async def primary_evidence(self, report_data: bytes) -> Any:
        try:
            return await self._inner.primary_evidence(report_data)
        except self._errors as exc:
            raise KbsClientError(f"cannot collect {self.tee} evidence: {exc}") from exc

    async def additional_evidence(self, device_report_data: bytes) -> str:
        try:
            return await self._inner.additional_evidence(device_report_data)
        except self._errors as exc:
            raise KbsClientError(f"cannot collect device evidence: {exc}") from exc


async def evidence_source(platform: Any = None) -> EvidenceSource:
    """The evidence of this machine's TEE and devices (``platform``: an
    :class:`attestation.detect.HostView`, the running system by default)."""
    from attestation.aa.agent import CompositeEvidenceSource
    from attestation.detect import HostView, detect_devices, detect_primary
    from attestation.errors import AttestationError

    plat = platform if platform is not None else HostView()
    try:
        inner = CompositeEvidenceSource(detect_primary(plat), await detect_devices(plat))
    except AttestationError as exc:
        raise KbsClientError(f"cannot set up the TEE attester: {exc}") from exc
    log.info("attesting as TEE %s", inner.tee)
    return _NativeSource(inner, (AttestationError,))


async def _run(args: argparse.Namespace) -> None:
    out = sys.stdout
    async with _http(args) as http:
        if args.command in ("attest", "get-resource"):
            key = (
                TeeKeyPair.from_pem(_read(args.tee_key_file, "--tee-key-file"))
                if args.tee_key_file
                else TeeKeyPair.generate()
            )
            if args.command == "get-resource" and args.attestation_token:
                if not args.tee_key_file:
                    raise KbsClientError("--attestation-token needs --tee-key-file")
                token = _read(args.attestation_token, "--attestation-token").decode().strip()
                data = await get_resource(http, args.url, args.path, token=token, key=key)
                print(b64_encode(data), file=out)
                return
            source = await evidence_source()

            async def handshake() -> Attestation:
                return await attest(http, args.url, source, key=key, init_data_toml=args.init_data)

            if args.command == "attest":
                print((await handshake()).token, file=out)
                return
            # as guest-components: a 401 on the resource re-runs the handshake (3 requests in all)
            data = await ResourceClient(http, args.url, handshake).get(args.path)
            print(b64_encode(data), file=out)
            return

        admin = AdminClient(http, args.url, _admin_auth(args))
        cmd = args.config_command
        if cmd == "set-attestation-policy":
            pol = _read(args.policy_file, "--policy-file")
            await admin.set_attestation_policy(pol, policy_id=args.policy_id, policy_type=args.policy_type)
            print(f"Set attestation policy success \n policy: {b64_encode(pol)}", file=out)
        elif cmd == "set-resource-policy":
            if args.policy_file:
                pol = _read(args.policy_file, "--policy-file")
            elif args.allow_all:
                pol = builtin_policy("allow_all")
            elif args.affirming:
                pol = builtin_policy("affirming")
            else:  # --deny-all, and --default (trustee's kbs-client uploads deny-all for it too)
                pol = builtin_policy("deny_all")
            if not re.search(rb"^\s*package\s+policy\s*$", pol, re.M):
                log.warning(
                    "the policy is not 'package policy': the KBS asks data.policy.allow, so it would "
                    "deny every request"
                )
            elif b"allow" not in pol:
                log.warning("the policy defines no 'allow': the KBS would deny every request")
            await admin.set_resource_policy(pol)
            print(f"Set resource policy success \n policy: {b64_encode(pol)}", file=out)
        elif cmd == "get-resource-policy":
            out.write((await admin.get_resource_policy(args.policy_id)).decode("utf-8", "replace"))
        elif cmd == "get-attestation-policy":
            out.write((await admin.get_attestation_policy(args.policy_id)).decode("utf-8", "replace"))
        elif cmd == "set-resource":
            data = _read(args.resource_file, "--resource-file")
            await admin.set_resource(args.path.removeprefix("/"), data)
            print(f"Set resource success \n resource: {b64_encode(data)}", file=out)
        elif cmd == "delete-resource":
            await admin.delete_resource(args.path.removeprefix("/"))
            print("Delete resource success", file=out)
        elif cmd == "get-reference-value":
            body = await admin.get_reference_value(args.ref_id)
            print(json.dumps(body), file=out)  # Rust Debug of a String: quoted and escaped
        elif cmd == "set-sample-reference-value":
            await admin.set_sample_reference_value(args.name, _ref_value(args))
            print("Reference Values Updated", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=rust_log_level() or "INFO",
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_run(args))
    except BrokenPipeError:
        exit_on_closed_pipe()
    except KbsProtocolError as exc:  # kbs_client's errors and the wire code's (JweError, ...)
        label = "" if type(exc) in (KbsClientError, TransportError) else f"{type(exc).__name__}: "
        print(f"Error: {label}{exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: {_os_reason(exc)}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
