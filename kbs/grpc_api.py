"""trustee's split deployment over gRPC (``protos/attestation.proto`` and ``reference.proto``,
copied in :mod:`kbs.protos`): the clients a KBS uses for ``coco_as_grpc`` and for
``rvps_config.type = "GrpcRemote"``, the KBS-side adapters that put them behind the same
interface as the built-in attestation service and RVPS, and the server plumbing the
``grpc-as`` and ``rvps`` programs share.

What a KBS sends for one /attest is what trustee's KBS sends (``kbs/src/attestation/coco/grpc.rs``):
one ``IndividualAttestationRequest`` per evidence, the primary one with the structured runtime data
``{"tee-pubkey","nonce","additional-evidence"}`` and the init-data TOML, one per additional device
with ``{"tee-pubkey","nonce"}``; evidence as URL-safe base64 (no padding) of its compact JSON;
``policy_ids = ["default"]``."""

from __future__ import annotations

import asyncio
import importlib.resources as resources
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coco_common.b64 import b64url_encode
from coco_common.strict_json import strict_loads

from .errors import KbsAttestationError, KbsError, PluginNotFound, RvpsError
from .protos import attestation_pb2 as as_pb
from .protos import reference_pb2 as rv_pb
from .storage import NS_ATTESTATION_POLICY, KvStore

__all__ = [
    "AS_SERVICE",
    "MAX_GRPC_MESSAGE",
    "RVPS_SERVICE",
    "AsClient",
    "RemoteAttestationService",
    "RemoteReferenceValues",
    "RvpsClient",
    "grpc_target",
    "make_handler",
]

log = logging.getLogger(__name__)

AS_SERVICE = "attestation.AttestationService"
RVPS_SERVICE = "reference.ReferenceValueProviderService"
#: largest gRPC message either side accepts (evidence with GPU reports fits well inside)
MAX_GRPC_MESSAGE = 16 * 1024 * 1024
#: how long one call may take (verification can fetch collateral)
CALL_TIMEOUT_S = 120.0
#: reference values a remote RVPS is asked for, per appraisal
MAX_RV_NAMES = 256
_ATTEST_FAILED = "Attestation error: RCAR handshake Attest failed"
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
]


def grpc_target(addr: str) -> tuple[str, bool]:
    """(host:port, tls) from trustee's ``as_addr`` / ``address`` (``http://h:p``, ``https://h:p``
    or a bare ``h:p``)."""
    tls = addr.startswith("https://")
    target = addr.removeprefix("https://").removeprefix("http://").rstrip("/")
    if not target or "/" in target:
        raise ValueError(f"not a gRPC address: {addr!r}")
    return target, tls


def _channel(addr: str) -> grpc.aio.Channel:
    target, tls = grpc_target(addr)
    if tls:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=_OPTIONS)
    return grpc.aio.insecure_channel(target, options=_OPTIONS)


class _Client:
    def __init__(self, addr: str, service: str) -> None:
        self.addr = addr
        self._ch = _channel(addr)
        self._service = service

    def _call(self, method: str, req_type: Any, resp_type: Any) -> Any:
        return self._ch.unary_unary(
            f"/{self._service}/{method}",
            request_serializer=req_type.SerializeToString,
            response_deserializer=resp_type.FromString,
        )

    async def close(self) -> None:
        await self._ch.close()


class RvpsClient(_Client):
    """trustee's ``ReferenceValueProviderService`` (an RVPS, or a ``grpc-as`` that fronts one)."""

    def __init__(self, addr: str) -> None:
        super().__init__(addr, RVPS_SERVICE)

    async def register(self, message: str) -> None:
        call = self._call(
            "RegisterReferenceValue",
            rv_pb.ReferenceValueRegisterRequest,
            rv_pb.ReferenceValueRegisterResponse,
        )
        try:
            await call(rv_pb.ReferenceValueRegisterRequest(message=message), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise RvpsError(f"RVPS error: register failed: {exc.code().name}") from exc

    async def query(self, reference_value_id: str) -> Any:
        """The value (JSON) or None when the RVPS has none."""
        call = self._call(
            "QueryReferenceValue", rv_pb.ReferenceValueQueryRequest, rv_pb.ReferenceValueQueryResponse
        )
        try:
            resp = await call(
                rv_pb.ReferenceValueQueryRequest(reference_value_id=reference_value_id),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise RvpsError(f"RVPS error: query failed: {exc.code().name}") from exc
        if not resp.HasField("reference_value_results"):
            return None
        try:
            return strict_loads(resp.reference_value_results)
        except ValueError as exc:
            raise RvpsError("RVPS error: the RVPS answered a value that is not JSON") from exc


class AsClient(_Client):
    """trustee's ``AttestationService`` gRPC API."""

    def __init__(self, addr: str) -> None:
        super().__init__(addr, AS_SERVICE)

    async def evaluate(
        self, requests: list[as_pb.IndividualAttestationRequest], policy_ids: list[str]
    ) -> str:
        call = self._call("AttestationEvaluate", as_pb.AttestationRequest, as_pb.AttestationResponse)
        try:
            resp = await call(
                as_pb.AttestationRequest(verification_requests=requests, policy_ids=policy_ids),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "remote attestation service refused: %s %s", exc.code().name, (exc.details() or "")[:300]
            )
            raise KbsAttestationError(_ATTEST_FAILED) from exc
        return str(resp.attestation_token)

    async def set_policy(self, policy_id: str, policy_b64url: str) -> None:
        call = self._call("SetAttestationPolicy", as_pb.SetPolicyRequest, as_pb.SetPolicyResponse)
        try:
            await call(
                as_pb.SetPolicyRequest(policy_id=policy_id, policy=policy_b64url), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise KbsAttestationError(f"Attestation error: set policy failed: {exc.code().name}") from exc


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


class _RemotePolicies:
    """The ``policies`` face of a remote attestation service (what the KBS admin API uses)."""

    def __init__(self, client: AsClient) -> None:
        self._client = client

    async def set(self, policy_id: str, policy: bytes) -> None:
        # on the wire as trustee's KBS forwards it: the base64url text the admin sent
        await self._client.set_policy(policy_id, b64url_encode(policy))

    async def list_ids(self) -> list[str]:
        # trustee has no such route; this KBS lists only policies it stores itself
        raise PluginNotFound("Plugin attestation-policy not found")


class RemoteAttestationService:
    """``coco_as_grpc``: the KBS checks the /attest body against its session and hands the
    evidence to a separate attestation service, as trustee's KBS does."""

    def __init__(self, client: AsClient) -> None:
        self.client = client
        self.policies = _RemotePolicies(client)

    async def attest(
        self, *, tee: str, session_nonce: str, hash_algorithm: str, untrusted_body: bytes
    ) -> str:
        from .attestation_service import additional_evidence, parse_attestation

        try:
            init, nonce, key, primary, additional = parse_attestation(
                untrusted_body, session_nonce=session_nonce
            )
            jwk = key.to_jwk()
            reqs = [
                as_pb.IndividualAttestationRequest(
                    tee=tee,
                    evidence=b64url_encode(_compact(primary).encode()),
                    structured_runtime_data=_compact(
                        {"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": additional}
                    ),
                    runtime_data_hash_algorithm=hash_algorithm,
                )
            ]
            if init is not None:
                reqs[0].init_data_toml = str(init["body"])
            if additional:
                for dtee, dev in additional_evidence(additional).items():
                    reqs.append(
                        as_pb.IndividualAttestationRequest(
                            tee=str(dtee),
                            evidence=b64url_encode(_compact(dev).encode()),
                            structured_runtime_data=_compact({"tee-pubkey": jwk, "nonce": nonce}),
                            runtime_data_hash_algorithm=hash_algorithm,
                        )
                    )
        except KbsAttestationError as exc:  # its detail is for the client, the reason for the log
            log.warning("attestation rejected: %s", exc)
            raise
        except Exception as exc:  # a malformed body: the details go to the log only
            log.warning("attestation rejected: %s", exc)
            raise KbsAttestationError(_ATTEST_FAILED) from exc
        return await self.client.evaluate(reqs, ["default"])


_RV_REF = re.compile(r"""query_reference_value\(\s*"([^"\\]{1,256})"\s*\)""")


class RemoteReferenceValues:
    """``rvps_config.type = "GrpcRemote"`` (or ``coco_as_grpc``): reference values live in a
    separate RVPS. The admin API forwards registrations; an appraisal asks the RVPS for the
    values its policies name (``query_reference_value("...")``, at most ``MAX_RV_NAMES``)."""

    def __init__(self, client: RvpsClient, store: KvStore | None = None) -> None:
        self.client = client
        self._store = store

    async def register(self, untrusted_body: bytes) -> list[str]:
        from .rvps import parse_message

        names = sorted(parse_message(untrusted_body))  # refuse what the RVPS would refuse, early
        await self.client.register(untrusted_body.decode("utf-8"))
        return names

    async def get(self, name: str) -> Any:
        return await self.client.query(name)

    async def _policy_texts(self) -> list[str]:
        texts = [
            f.read_text()
            for f in resources.files("kbs.policies").iterdir()
            if f.name.endswith(".rego") and f.is_file()
        ]
        if self._store is not None:
            for k in await self._store.keys(NS_ATTESTATION_POLICY):
                raw = await self._store.get(NS_ATTESTATION_POLICY, k)
                if raw is not None:
                    texts.append(raw.decode("utf-8", "replace"))
        return texts

    async def all(self) -> dict[str, Any]:
        names: list[str] = []
        for text in await self._policy_texts():
            for n in _RV_REF.findall(text):
                if n not in names:
                    names.append(n)
        names = names[:MAX_RV_NAMES]
        values = await asyncio.gather(*(self.client.query(n) for n in names))
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}


def make_handler(fn: Callable[[Any], Awaitable[Any]], req_type: Any, resp_type: Any) -> grpc.RpcMethodHandler:
    """A unary handler that turns typed errors into gRPC statuses (details never include secrets)."""

    async def handle(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(req)
        except ValueError as exc:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500])
        except KbsError as exc:
            await ctx.abort(grpc.StatusCode.ABORTED, f"{exc.variant}: {exc.detail}"[:500])
        except Exception:
            log.exception("gRPC handler failed")
            await ctx.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")  # pragma: no cover - ctx.abort raises

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=req_type.FromString, response_serializer=resp_type.SerializeToString
    )
