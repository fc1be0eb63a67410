"""``grpc-as``: this project's attestation service as its own server, on trustee's
attestation-service gRPC API (``AttestationService``: ``AttestationEvaluate``,
``SetAttestationPolicy``, ``GetAttestationChallenge``; plus ``ReferenceValueProviderService``,
as trustee's ``grpc-as`` serves both), so a KBS with ``[attestation_service] type =
"coco_as_grpc"`` and the attestation service scale and restart separately.

``grpc-as --config-file config.json --socket 127.0.0.1:3000`` (trustee's flags). The config is
trustee's attestation-service one: ``rvps_config`` (``BuiltIn``, or ``GrpcRemote`` with
``address`` for a separate ``rvps``), ``attestation_token_broker``, ``verifier_config``,
``storage_backend`` (policies, and reference values for a built-in RVPS)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from coco_common.b64 import b64_encode, b64url_decode
from coco_common.cli import add_version, log_level_type, rust_log_level
from coco_common.strict_json import strict_loads
from kbs_protocol.jcs import hash_canonical

from .app import make_broker
from .attestation_service import AttestationService, EvidenceRejected, annotate_submod, init_data_claims
from .config import load_document, parse_as_server_config, parse_compatibility, security_config
from .ear import Appraisal
from .errors import KbsAttestationError, KbsConfigError, KbsError
from .grpc_api import (
    AS_SERVICE,
    MAX_GRPC_MESSAGE,
    RVPS_SERVICE,
    RemoteReferenceValues,
    RvpsClient,
    make_handler,
)
from .logs import setup_logging
from .policy import AttestationPolicies
from .policy_worker import PolicyWorkers
from .protos import attestation_pb2 as as_pb
from .protos import reference_pb2 as rv_pb
from .rvps import ReferenceValues
from .storage import KvStore, open_store
from .trustee_verifiers import trustee_verifier_problems, verifier_options
from .verifiers import KNOWN_TEES, TEE_CLASS, VerifierRegistry

__all__ = ["AttestationServer", "evaluate", "main", "serve_grpc"]

log = logging.getLogger("grpc-as")

#: evidences in one AttestationEvaluate (a CPU and its devices)
MAX_REQUESTS = 16
_ALGS = ("sha256", "sha384", "sha512")


def _unb64url(v: str, what: str) -> bytes:
    """base64url as trustee's grpc-as decodes it (``URL_SAFE_NO_PAD``): ``=`` is an error."""
    try:
        return b64url_decode(v, allow_padding=False)
    except ValueError as exc:
        raise ValueError(f"{what} is not URL-safe base64") from exc


async def evaluate(
    svc: AttestationService, req: as_pb.AttestationRequest, *, now: datetime | None = None
) -> str:
    """Verify every evidence of one request, appraise each with its class's default policy and
    issue one EAR token (``cpu0``, ``gpu0`` ... as the built-in service does)."""
    t = now or datetime.now(UTC)
    n = len(req.verification_requests)
    if not 1 <= n <= MAX_REQUESTS:
        raise ValueError(f"verification_requests must hold 1..{MAX_REQUESTS} evidences")
    submods: dict[str, Appraisal] = {}
    counters: dict[str, int] = {}
    rv = await svc.rvps.all()
    for i, r in enumerate(req.verification_requests):
        if r.tee not in KNOWN_TEES:
            raise ValueError(f"unknown tee {r.tee[:40]!r}")
        alg = r.runtime_data_hash_algorithm or "sha384"
        if alg not in _ALGS:
            raise ValueError("runtime_data_hash_algorithm must be sha256, sha384 or sha512")
        try:
            evidence = strict_loads(_unb64url(r.evidence, "evidence"))
        except ValueError as exc:
            raise ValueError(f"evidence {i} is not base64url of JSON") from exc
        which = r.WhichOneof("runtime_data")
        rt_claims: Any = None
        if which == "structured_runtime_data":
            rt_claims = strict_loads(r.structured_runtime_data)
            rd = hash_canonical(alg, rt_claims)
            if isinstance(rt_claims, dict) and not svc.verbose:
                rt_claims = {k: v for k, v in rt_claims.items() if k != "additional-evidence"}
        elif which == "raw_runtime_data":
            rd = hashlib.new(alg, _unb64url(r.raw_runtime_data, "raw_runtime_data")).digest()
        else:
            raise ValueError("runtime data is required (the evidence must be bound to something)")
        init_hash: bytes | None = None
        init_claims: dict[str, Any] | None = None
        iw = r.WhichOneof("init_data")
        if iw == "init_data_toml":
            init_hash, init_claims = init_data_claims({"body": r.init_data_toml}, svc.limits)
        elif iw == "init_data_digest":
            init_hash = _unb64url(r.init_data_digest, "init_data_digest")
        claims = await svc._verify(r.tee, evidence, rd, init_hash, t)
        cls = TEE_CLASS.get(r.tee, "cpu")
        parts = (
            [
                ("switch" if isinstance(d, dict) and d.get("arch") == "LS10" else "gpu", d)
                for d in claims["devices"]
            ]
            if r.tee == "nvidia" and isinstance(claims.get("devices"), list)
            else [(cls, claims)]
        )
        for part_cls, part in parts:
            annotated = annotate_submod(r.tee, part, init_claims, rt_claims)
            idx = counters.get(part_cls, 0)
            counters[part_cls] = idx + 1
            submods[f"{part_cls}{idx}"] = await svc._appraise(part_cls, annotated, rv)
    return svc.broker.issue(submods, now=t.timestamp())


class AttestationServer:
    """The gRPC services over one :class:`AttestationService`."""

    def __init__(self, svc: AttestationService) -> None:
        self.svc = svc

    async def _evaluate(self, req: as_pb.AttestationRequest) -> as_pb.AttestationResponse:
        try:
            token = await evaluate(self.svc, req)
        except EvidenceRejected as exc:
            log.warning("attestation rejected: %s", exc)
            raise KbsAttestationError("Attestation error: evidence rejected") from exc
        except KbsError as exc:
            log.warning("attestation failed: %s: %s", exc.variant, exc.detail)
            raise
        return as_pb.AttestationResponse(attestation_token=token)

    async def _set_policy(self, req: as_pb.SetPolicyRequest) -> as_pb.SetPolicyResponse:
        await self.svc.policies.set(req.policy_id, _unb64url(req.policy, "policy"))
        log.info("attestation policy set", extra={"policy_id": req.policy_id})
        return as_pb.SetPolicyResponse()

    async def _challenge(self, req: as_pb.ChallengeRequest) -> as_pb.ChallengeResponse:
        if req.inner.get("tee") == "se":
            raise ValueError("IBM SE challenges are not supported by this attestation service")
        return as_pb.ChallengeResponse(attestation_challenge=b64_encode(os.urandom(32)))

    async def _rv_register(
        self, req: rv_pb.ReferenceValueRegisterRequest
    ) -> rv_pb.ReferenceValueRegisterResponse:
        await self.svc.rvps.register(req.message.encode("utf-8"))
        return rv_pb.ReferenceValueRegisterResponse()

    async def _rv_query(self, req: rv_pb.ReferenceValueQueryRequest) -> rv_pb.ReferenceValueQueryResponse:
        return await rv_query(self.svc.rvps, req)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler(
                AS_SERVICE,
                {
                    "AttestationEvaluate": make_handler(
                        self._evaluate, as_pb.AttestationRequest, as_pb.AttestationResponse
                    ),
                    "SetAttestationPolicy": make_handler(
                        self._set_policy, as_pb.SetPolicyRequest, as_pb.SetPolicyResponse
                    ),
                    "GetAttestationChallenge": make_handler(
                        self._challenge, as_pb.ChallengeRequest, as_pb.ChallengeResponse
                    ),
                },
            ),
            rvps_handler(self._rv_register, self._rv_query),
        ]


async def rv_query(rvps: Any, req: rv_pb.ReferenceValueQueryRequest) -> rv_pb.ReferenceValueQueryResponse:
    import json

    v = await rvps.get(req.reference_value_id)
    if v is None:
        return rv_pb.ReferenceValueQueryResponse()
    return rv_pb.ReferenceValueQueryResponse(reference_value_results=json.dumps(v, separators=(",", ":")))


def rvps_handler(register: Any, query: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        RVPS_SERVICE,
        {
            "RegisterReferenceValue": make_handler(
                register, rv_pb.ReferenceValueRegisterRequest, rv_pb.ReferenceValueRegisterResponse
            ),
            "QueryReferenceValue": make_handler(
                query, rv_pb.ReferenceValueQueryRequest, rv_pb.ReferenceValueQueryResponse
            ),
        },
    )


async def serve_grpc(handlers: list[grpc.GenericRpcHandler], socket: str, name: str) -> None:
    """Serve ``handlers`` on ``socket`` (host:port) until SIGTERM / SIGINT."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
        ],
        maximum_concurrent_rpcs=256,
    )
    server.add_generic_rpc_handlers(handlers)
    if server.add_insecure_port(socket) == 0:
        raise OSError(f"cannot listen on {socket}")
    await server.start()
    log.info("%s listening", name, extra={"socket": socket})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)


async def build_service(doc: Any) -> tuple[AttestationService, list[KvStore | RvpsClient]]:
    a, st, warnings = parse_as_server_config(doc)
    compat = parse_compatibility(doc)  # the [compatibility] keys that concern an attestation service
    for w in warnings:
        log.warning("config: %s", w)
    problems = trustee_verifier_problems(a.trustee_verifier_config)
    if problems:
        raise KbsConfigError("; ".join(problems))
    store = open_store(st.storage_type, st)
    broker = make_broker(a)
    closers: list[KvStore | RvpsClient] = [store]
    rvps: Any
    if a.rvps_type == "GrpcRemote":
        client = RvpsClient(a.rvps_address or "http://127.0.0.1:50003")
        closers.append(client)
        rvps = RemoteReferenceValues(client, store)
    else:
        rvps = ReferenceValues(store, hide_expired=compat.hide_expired_reference_values)
    sec_doc = doc.get("security", {}) if isinstance(doc, dict) else {}
    if not isinstance(sec_doc, dict):
        raise KbsConfigError("security must be a table")
    sec = security_config(sec_doc)
    dev = sec.dev_verifiers or ()
    if dev:
        log.warning(
            "INSECURE: the unsigned development verifiers %s are enabled (security.dev_verifiers): a client "
            "with no TEE at all can attest as them; for tests and demos only",
            ", ".join(dev),
        )
    policies = AttestationPolicies(store, PolicyWorkers(sec.policy_workers, timeout_s=sec.policy_timeout_s))
    policies.check_at_upload = compat.check_policy_at_upload
    svc = AttestationService(
        VerifierRegistry(options=verifier_options(a), dev_verifiers=dev),
        broker,
        policies,
        rvps,
        verbose_token=a.verbose_token,
        limits=sec,
    )
    return svc, closers


async def _run(config_file: str | None, socket: str) -> None:
    svc, closers = await build_service(load_document(config_file) if config_file else {})
    try:
        await serve_grpc(AttestationServer(svc).handlers(), socket, "grpc-as")
    finally:
        for c in closers:
            await c.close()


def service_main(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> int:
    """The shared command line of the split services (``grpc-as``, ``rvps``): ``--version``,
    ``--log-level`` (``$KBS_LOG_LEVEL``, else ``RUST_LOG``), JSON-lines logs, and one
    ``Error:`` line with exit status 1 for a config or start-up failure."""
    add_version(p)
    p.add_argument(
        "--log-level",
        type=log_level_type,
        default=os.environ.get("KBS_LOG_LEVEL") or rust_log_level() or "info",
        help="trace, debug, info, warn, error, off (default: $KBS_LOG_LEVEL, else RUST_LOG, else info)",
    )
    args = p.parse_args(argv)
    setup_logging(args.log_level, json_lines=True)
    try:
        asyncio.run(run(args))
    except (KbsError, OSError) as exc:
        msg = exc.detail if isinstance(exc, KbsError) else str(exc)
        print(f"Error: {msg}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grpc-as", description="Attestation service on trustee's gRPC API")
    p.add_argument("-c", "--config-file", help="attestation-service config (JSON, TOML or YAML)")
    p.add_argument("-s", "--socket", default="127.0.0.1:3000", help="listen address (default 127.0.0.1:3000)")
    return service_main(p, argv, lambda a: _run(a.config_file, a.socket))


if __name__ == "__main__":
    sys.exit(main())
