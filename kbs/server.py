"""The KBS HTTP API on aiohttp (reference §1, §2, §5, §6): status codes and
RFC 7807 bodies as trustee, the ``kbs-session-id`` cookie, passport mode,
admin endpoints, ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web

from attestation.errors import AttestationError
from coco_common.b64 import b64url_decode, b64url_encode
from coco_common.strict_json import strict_loads
from kbs_protocol import jwe as wire_jwe
from kbs_protocol.errors import InvalidUri, JweError
from kbs_protocol.uri import parse_resource_segments

from .app import KbsState, build_state
from .attestation_service import AttestationService
from .config import KbsServerConfig
from .ear import extract_tee_pubkey
from .errors import (
    AdminAccessDenied,
    AdminAuthAccess,
    AdminAuthInitialization,
    KbsAttestationError,
    KbsConfigError,
    KbsError,
    KbsJweError,
    ParsePolicyError,
    PluginInternalError,
    PluginNotFound,
    PolicyDeny,
    RvpsError,
    TokenNotFound,
)
from .external_plugin import PluginCall
from .intel_ta import IntelTrustAuthority
from .policy import RESOURCE_POLICY_ID, AttestationPolicies
from .sessions import Session
from .verifiers import DEVICE_TEES, KNOWN_TEES, UnsupportedTee, auth_extra_params

__all__ = ["make_app", "serve", "ssl_context"]

log = logging.getLogger("kbs")

PROTOCOL_VERSION = "0.4.0"
MAX_HEADER_BYTES = 128 * 1024
GIL_SWITCH_S = 0.001
SESSION_COOKIE = "kbs-session-id"
AUTH_DESERIALIZE = "Attestation error: RCAR handshake Auth failed: deserialize Request"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


def _audit_fields(request: web.Request, segs: list[str], claims: Any) -> dict[str, Any]:
    """What an audit line names: resource, TEE, a digest of the claims, the client (no value)."""
    tees: list[str] = []
    sub = claims.get("submods") if isinstance(claims, dict) else None
    if isinstance(sub, dict):
        for mod in sub.values():
            ev = mod.get("ear.veraison.annotated-evidence") if isinstance(mod, dict) else None
            if isinstance(ev, dict):
                tees += [k for k in ev if k not in ("runtime_data_claims", "report_data", "init_data",
                                                    "init_data_claims")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "resource": "/".join(x[:64] for x in segs[:3]),
        "tee": ",".join(tees[:8]),
        "claims_sha256": digest,
        "client": request.remote,
    }


class _InternalError(KbsError):
    """An unexpected failure inside the KBS (status 500; the detail never says more)."""

    status = 500
    variant = "PluginInternalError"


def _error(exc: KbsError, *, trustee_texts: bool = False) -> web.Response:
    body = exc.body(trustee_texts=trustee_texts)
    return web.Response(status=exc.status, body=body, content_type="application/json")


def _set_cookie(resp: web.StreamResponse, s: Session) -> None:
    resp.headers.add(
        "Set-Cookie", f"{SESSION_COOKIE}={s.id}; Expires={formatdate(s.expires_at, usegmt=True)}"
    )


def _json(doc: Any) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), content_type="application/json")


class _Handlers:
    def __init__(self, state: KbsState) -> None:
        self.s = state

    # --- RCAR ---------------------------------------------------------------------------------
    async def auth(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            doc = strict_loads(raw)
        except ValueError as exc:
            raise KbsAttestationError(AUTH_DESERIALIZE) from exc
        fields = {"version", "tee", "extra-params"}
        if not isinstance(doc, dict) or not fields <= set(doc):
            raise KbsAttestationError(AUTH_DESERIALIZE)
        if set(doc) != fields and self.s.config.compatibility.strict_request_bodies:
            raise KbsAttestationError(AUTH_DESERIALIZE)
        version, tee = doc["version"], doc["tee"]
        if not isinstance(version, str) or not isinstance(tee, str):
            raise KbsAttestationError(AUTH_DESERIALIZE)
        # semver "=0.4.0": build metadata is ignored, a pre-release does not match
        if not _SEMVER.fullmatch(version) or version.split("+", 1)[0] != PROTOCOL_VERSION:
            raise KbsAttestationError(
                "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: "
                f"expect ={PROTOCOL_VERSION} while the request is {version[:40]}"
            )
        if tee not in KNOWN_TEES:
            raise KbsAttestationError(AUTH_DESERIALIZE)
        if tee in DEVICE_TEES:
            # a device TEE attests an accelerator, not the CPU the workload runs on
            raise KbsAttestationError(
                f"Attestation error: RCAR handshake Auth failed: {tee} is a device TEE, not a primary TEE"
            )
        if isinstance(self.s.service, AttestationService) and self.s.service.registry.disabled(tee):
            raise KbsAttestationError(
                f"Attestation error: RCAR handshake Auth failed: tee {tee} is not enabled"
            )
        alg = "sha512" if tee == "se" else "sha384"
        nonce: str | None = None
        try:  # se: the verifier's attestation request is the nonce (trustee's supplemental challenge)
            extra: Any = auth_extra_params(tee, doc["extra-params"])
            # a remote AS or ITA: a random nonce; only se's verifier issues one (off the loop)
            if isinstance(self.s.service, AttestationService) and tee == "se":
                nonce = await asyncio.to_thread(
                    self.s.service.registry.supplemental_challenge, tee, doc["extra-params"]
                )
        except (UnsupportedTee, AttestationError) as exc:
            raise KbsAttestationError(f"Attestation error: RCAR handshake Auth failed: {exc}") from exc
        if isinstance(self.s.service, IntelTrustAuthority):  # trustee's ITA backend picks the hash
            alg, extra = self.s.service.select_hash_algorithm(tee, doc["extra-params"])
        sess = await self.s.sessions.create(tee, hash_algorithm=alg, nonce=nonce)
        self.s.metrics.inc("kbs_sessions_created_total", tee=tee)
        resp = _json({"nonce": sess.nonce, "extra-params": extra})
        _set_cookie(resp, sess)
        return resp

    async def attest(self, request: web.Request) -> web.Response:
        raw = await request.read()
        sess = await self.s.sessions.get(request.cookies.get(SESSION_COOKIE))
        if sess is None:
            self.s.metrics.inc("kbs_attestations_total", result="no_session")
            raise KbsAttestationError("Attestation error: RCAR handshake Attest failed")
        async with self.s.sessions.lock(sess.id):  # one nonce, one attestation
            fresh = await self.s.sessions.get(sess.id)
            if fresh is None:
                raise KbsAttestationError("Attestation error: RCAR handshake Attest failed")
            sess = fresh
            if sess.token is None:
                try:
                    token = await self.s.service.attest(
                        tee=sess.tee,
                        session_nonce=sess.nonce,
                        hash_algorithm=sess.hash_algorithm,
                        untrusted_body=raw,
                    )
                except KbsAttestationError:
                    self.s.metrics.inc("kbs_attestations_total", result="rejected")
                    raise
                if isinstance(self.s.service, AttestationService):  # signed here, by our broker
                    self.s.tokens.remember_own(token, self.s.service.broker.public_jwk)
                sess = await self.s.sessions.mark_attested(sess, token)
                self.s.metrics.inc("kbs_attestations_total", result="ok")
        resp = _json({"token": sess.token})
        _set_cookie(resp, sess)
        return resp

    # --- resources ----------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> str:
        sess = await self.s.sessions.get(request.cookies.get(SESSION_COOKIE))
        if sess is not None and sess.token is not None:
            return sess.token
        authz = request.headers.get("Authorization", "")
        if authz.startswith("Bearer ") and authz[7:].strip():
            return authz[7:].strip()
        raise TokenNotFound("Attestation Token not found")

    @staticmethod
    def acl_path(request: web.Request) -> str:
        """What an admin ACL regex is matched against: the decoded path the router dispatched,
        without the query. Trustee matches the raw request URI (query included); there a
        percent-encoded path (``%70rod``, ``prod%2Fkey``) reaches the same handler as the plain
        one yet slips past an exclusion-style ACL. Here both see one string."""
        return "/kbs/v0/" + request.match_info.get("tail", "")

    def _admin(self, request: web.Request, err: type[KbsError]) -> None:
        try:
            role = self.s.admin.check(self.acl_path(request), request.headers.get("Authorization"))
        except AdminAccessDenied as exc:
            log.warning("admin access denied", extra={"path": request.path, "reason": str(exc)})
            if err is AdminAuthInitialization:
                raise err(f"failed to initialize [admin] configuration: Admin access denied: {exc}") from exc
            raise err(f"Admin access denied: {exc}") from exc
        log.info("admin request", extra={"path": request.path, "method": request.method, "role": role})

    @staticmethod
    def _resource_key(segs: list[str]) -> str:
        try:
            return "/".join(parse_resource_segments(segs))
        except InvalidUri as exc:
            raise PluginInternalError("Plugin internal error: invalid resource path") from exc

    async def resource(self, request: web.Request, segs: list[str]) -> web.Response:
        if request.method == "GET":
            try:
                return await self._get_resource(request, segs)
            except KbsError as exc:
                self.s.metrics.inc("kbs_resource_requests_total", result=exc.variant)
                raise
        if request.method == "PUT":
            # trustee: only POST and DELETE are admin calls; PUT goes through the token and the
            # resource policy like a GET, and the resource plugin then refuses the method
            claims = self.s.tokens.verify(await self._token(request))
            if not await self.s.resource_policy.allows(claims, segs, dict(request.query.items())):
                raise PolicyDeny("Access denied by policy")
            raise PluginInternalError(
                "Plugin internal error: Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`"
            )
        if request.method == "POST":
            self._admin(request, AdminAuthInitialization)
            key = self._resource_key(segs)
            data = await request.read()
            await self.s.resources.set(key, data)
            log.info("resource stored", extra={"resource": key, "bytes": len(data)})
            return web.Response(status=200, content_type="text/xml")
        if request.method == "DELETE":
            self._admin(request, AdminAuthInitialization)
            key = self._resource_key(segs)
            if not await self.s.resources.delete(key):
                raise PluginInternalError("Plugin internal error: resource not found")
            log.info("resource deleted", extra={"resource": key})
            return web.Response(status=200)
        raise PluginInternalError("Plugin internal error: method not supported")

    async def _get_resource(self, request: web.Request, segs: list[str]) -> web.Response:
        token = await self._token(request)
        claims = self.s.tokens.verify(token)
        query = {k: v for k, v in request.query.items()}
        audit = _audit_fields(request, segs, claims)
        if not await self.s.resource_policy.allows(claims, segs, query):
            log.info("resource refused by the resource policy", extra=audit)
            raise PolicyDeny("Access denied by policy")
        key = self._resource_key(segs)
        data = await self.s.resources.get(key)
        if data is None:
            log.info("resource not found", extra=audit)  # the wire answer stays trustee's
            raise PluginInternalError("Plugin internal error")
        tee_key = extract_tee_pubkey(claims, self.s.config.attestation_token.extra_teekey_paths)
        try:
            doc = wire_jwe.encrypt(data, tee_key)
        except JweError as exc:
            raise KbsJweError(f"JWE error: {exc}") from exc
        except ValueError as exc:  # a key cryptography refuses late (tokens from other issuers)
            raise KbsJweError("JWE error: the tee-pubkey cannot be encrypted to") from exc
        self.s.metrics.inc("kbs_resource_requests_total", result="ok")
        log.info("resource released", extra={**audit, "bytes": len(data)})
        return _json(doc)

    # --- admin --------------------------------------------------------------------------------
    async def resource_policy(self, request: web.Request) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "GET":
            return _json(await self.s.resource_policy.list_ids())
        await self.s.resource_policy.set(_resource_policy_body(await request.read()))
        log.info("resource policy set")
        return web.Response(status=200)

    async def attestation_policy(self, request: web.Request) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "GET":
            return _json(await self.s.service.policies.list_ids())
        pid, policy = _attestation_policy_body(await request.read())
        await self.s.service.policies.set(pid, policy)
        log.info("attestation policy set", extra={"policy_id": pid})
        return web.Response(status=200)

    async def policy_text(self, request: web.Request, kind: str, policy_id: str) -> web.Response:
        """GET /kbs/v0/{resource,attestation}-policy/{id}: the stored policy, as uploaded
        (``{"policy_id", "policy": base64url}``); an extension, trustee lists ids only."""
        self._admin(request, AdminAuthAccess)
        if kind == "resource-policy":
            text = await self.s.resource_policy.text() if policy_id == RESOURCE_POLICY_ID else None
        else:
            policies = self.s.service.policies
            if not isinstance(policies, AttestationPolicies):  # a remote or external AS holds them
                raise PluginNotFound("attestation-policy read-back needs the built-in attestation service")
            text = await policies.text(policy_id)
        if text is None:
            raise PluginNotFound(f"{kind} {policy_id[:64]} not found")
        return _json({"policy_id": policy_id, "policy": b64url_encode(text)})

    async def reference_value(self, request: web.Request, rest: list[str]) -> web.Response:
        self._admin(request, AdminAuthAccess)
        if request.method == "POST":  # trustee registers whatever follows reference-value/
            names = await self.s.rvps.register(await request.read())
            log.info("reference values registered", extra={"names": names})
            return web.Response(status=200, content_type="application/json")
        if request.method == "GET" and rest:
            v = await self.s.rvps.get("/".join(rest))
            if v is None:
                raise RvpsError("RVPS error: reference value not found")
            return _json(v)
        if request.method == "GET":
            raise RvpsError("RVPS error: no reference value id")
        raise PluginNotFound("Plugin reference-value not found")

    async def client_plugin(self, request: web.Request, name: str, rest: list[str]) -> web.Response:
        """trustee's generic plugin flow: the plugin says whether the call is an admin one;
        otherwise the attestation token and the resource policy (``data.plugin`` = the plugin's
        name) decide, and the plugin says whether the answer is JWE-sealed to the TEE key."""
        plugin = self.s.client_plugins[name]
        call = PluginCall(await request.read(), dict(request.query.items()), rest, request.method)
        if await plugin.validate_auth(call):
            self._admin(request, AdminAuthInitialization)
            return web.Response(status=200, body=await plugin.handle(call), content_type="text/xml")
        claims = self.s.tokens.verify(await self._token(request))
        if not await self.s.resource_policy.allows(claims, rest, call.query, plugin=name):
            raise PolicyDeny("Access denied by policy")
        data = await plugin.handle(call)
        if await plugin.encrypted(call):
            tee_key = extract_tee_pubkey(claims, self.s.config.attestation_token.extra_teekey_paths)
            try:
                return _json(wire_jwe.encrypt(data, tee_key))
            except JweError as exc:
                raise KbsJweError(f"JWE error: {exc}") from exc
        return web.Response(status=200, body=data, content_type="text/xml")

    async def sample_plugin(self, request: web.Request) -> web.Response:
        """trustee's ``sample`` plugin: admin-authorised, any method, a fixed answer."""
        self._admin(request, AdminAuthInitialization)
        return web.Response(status=200, body=b"sample plugin response", content_type="text/xml")

    async def dispatch(self, request: web.Request) -> web.Response:
        tail = request.match_info.get("tail", "")
        segs = tail.split("/")
        first, rest, m = segs[0], segs[1:], request.method
        if first == "auth" and m == "POST" and not rest:
            return await self.auth(request)
        if first == "attest" and m == "POST" and not rest:
            return await self.attest(request)
        if first == "resource-policy" and m in ("GET", "POST") and not rest:
            return await self.resource_policy(request)
        if first == "attestation-policy" and m in ("GET", "POST") and not rest:
            return await self.attestation_policy(request)
        if first in ("resource-policy", "attestation-policy") and m == "GET" and len(rest) == 1:
            return await self.policy_text(request, first, rest[0])
        if first == "reference-value" and m in ("GET", "POST"):
            return await self.reference_value(request, rest)
        if first in self.s.config.plugins and first == "resource":
            return await self.resource(request, rest)
        if first in self.s.client_plugins:
            return await self.client_plugin(request, first, rest)
        if first in self.s.config.plugins and first == "sample":
            return await self.sample_plugin(request)
        raise PluginNotFound(f"Plugin {first[:64]} not found")  # "" too, as trustee


#: metric label values for request paths; anything else (chosen by the client) is "other",
#: so unauthenticated requests can neither add series nor put arbitrary text into /metrics
_ENDPOINTS = frozenset(
    {"auth", "attest", "resource", "resource-policy", "attestation-policy", "reference-value"}
)


def _endpoint(path: str) -> str:
    if not path.startswith("/kbs/v0/"):
        return path if path in ("/healthz", "/metrics") else "other"
    first = path[len("/kbs/v0/") :].split("/", 1)[0]
    return first if first in _ENDPOINTS else "other"


def make_app(state: KbsState) -> web.Application:
    h = _Handlers(state)
    m = state.metrics

    @web.middleware
    async def observe(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        debug = log.isEnabledFor(logging.DEBUG)
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except KbsError as exc:
            status = exc.status
            log.info(
                "request refused",
                extra={"method": request.method, "path": request.path, "status": status, "err": exc.variant},
            )
            if not state.config.compatibility.detailed_error_texts:  # the client gets trustee's text
                log.info("refusal reason", extra={"err": exc.variant, "detail": exc.detail})
                return _error(exc, trustee_texts=True)
            return _error(exc)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            # a bug: logged with its traceback, answered as an RFC 7807 body (never aiohttp's bare page)
            log.exception("internal error", extra={"path": request.path})
            return _error(_InternalError("internal error"))
        finally:
            dt = time.perf_counter() - t0
            ep = _endpoint(request.path)
            m.inc("kbs_http_requests_total", endpoint=ep, method=request.method, status=str(status))
            m.observe(dt, endpoint=ep)
            if debug:
                log.debug(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "ms": round(dt * 1e3, 2),
                    },
                )

    app = web.Application(
        middlewares=[observe], client_max_size=state.config.http_server.payload_request_size * 1024 * 1024
    )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=m.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    for method in ("GET", "POST", "PUT", "DELETE"):  # trustee's route; other methods: 405
        app.router.add_route(method, "/kbs/v0/{tail:.*}", h.dispatch)
    return app


def ssl_context(cfg: KbsServerConfig) -> ssl.SSLContext | None:
    hs = cfg.http_server
    if hs.insecure_http:
        return None
    assert hs.private_key and hs.certificate
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, path in (("certificate", hs.certificate), ("private_key", hs.private_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise KbsConfigError(f"http_server.{key} {path}: {(exc.strerror or str(exc)).lower()}") from exc
    try:
        ctx.load_cert_chain(hs.certificate, hs.private_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":  # OpenSSL's reason code, not its text
            msg = (
                f"http_server.private_key {hs.private_key} does not match "
                f"http_server.certificate {hs.certificate}"
            )
        else:
            msg = (
                f"http_server.certificate {hs.certificate} / private_key {hs.private_key}: "
                f"not a PEM certificate and unencrypted PEM key ({exc.reason or 'SSL error'})"
            )
        raise KbsConfigError(msg) from exc
    except OSError as exc:
        raise KbsConfigError(
            f"cannot load the TLS certificate/key: {(exc.strerror or str(exc)).lower()}"
        ) from exc
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    if hs.tls_profile == "modern":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif hs.tls_profile == "old":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS < 1.2 is refused by this build on purpose
    elif hs.tls_profile == "custom":
        for attr, v in (("minimum_version", hs.tls_min_version), ("maximum_version", hs.tls_max_version)):
            if v is not None:
                if v not in versions:
                    raise KbsConfigError("tls_min_version / tls_max_version must be 1.2 or 1.3")
                setattr(ctx, attr, versions[v])
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if hs.tls_ciphers:
        # trustee's lists may name TLS 1.3 suites (TLS_AES_...): Python's ssl cannot restrict those,
        # so they stay OpenSSL's TLS 1.3 defaults; the TLS <= 1.2 part is applied
        names = [c for c in hs.tls_ciphers.split(":") if c]
        legacy = [c for c in names if not c.startswith("TLS_")]
        if len(legacy) != len(names):
            log.warning("tls_ciphers: TLS 1.3 suites are OpenSSL's defaults here (not configurable)")
        if legacy:
            try:
                ctx.set_ciphers(":".join(legacy))
            except ssl.SSLError as exc:
                raise KbsConfigError("tls_ciphers is not a valid OpenSSL cipher list") from exc
    if hs.tls_groups:
        log.warning("tls_groups: key exchange groups are OpenSSL's defaults here (not configurable)")
    return ctx


async def _sweeper(state: KbsState, every_s: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(KbsError):
            n = await state.store.purge_expired()
            n += await state.sessions.purge_expired()
            if n:
                log.info("expired entries removed", extra={"count": n})


async def serve(
    cfg: KbsServerConfig, *, stop: asyncio.Event | None = None, shutdown_timeout: float = 10.0
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain and close."""
    # a thread parsing a large /attest body holds the GIL; the event loop gets it back within
    # 1 ms instead of Python's 5 ms, so cheap requests are not queued behind it
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, GIL_SWITCH_S))
    try:
        await _serve(cfg, stop, shutdown_timeout)
    finally:
        sys.setswitchinterval(switch)


async def _serve(cfg: KbsServerConfig, stop: asyncio.Event | None, shutdown_timeout: float) -> None:
    state = await build_state(cfg)
    app = make_app(state)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        # trustee (actix) takes request heads up to 128 KiB: multi-device EAR tokens travel as Bearer
        max_field_size=MAX_HEADER_BYTES,
        max_line_size=16 * 1024,
    )
    await runner.setup()
    ctx = ssl_context(cfg)
    for sock in cfg.http_server.sockets:
        host, _, port = sock.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=ctx)
        await site.start()
        log.info("listening", extra={"socket": sock, "tls": ctx is not None})
    ev = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, ev.set)
    sweeper = asyncio.create_task(_sweeper(state))
    try:
        await ev.wait()
    finally:
        log.info("shutting down")
        sweeper.cancel()
        await runner.cleanup()
        for close in state.closers:
            await close()


def _resource_policy_body(untrusted: bytes) -> bytes:
    """trustee's resource-policy POST body: a JSON object with a string ``policy`` (unpadded
    base64url of UTF-8 Rego); other members are ignored and every failure is ParsePolicyError."""
    try:
        doc = strict_loads(untrusted)
    except ValueError as exc:
        raise ParsePolicyError("Failed to parse policy: Illegal SetPolicy Request Json") from exc
    if not isinstance(doc, dict) or "policy" not in doc:
        raise ParsePolicyError("Failed to parse policy: No `policy` field inside SetPolicy Request Json")
    if not isinstance(doc["policy"], str):
        raise ParsePolicyError(
            "Failed to parse policy: `policy` field is not a string in SetPolicy Request Json"
        )
    try:
        return b64url_decode(doc["policy"], allow_padding=False)
    except ValueError as exc:
        raise ParsePolicyError("Failed to parse policy: Failed to decode policy") from exc


_SET_POLICY_FAILED = "Attestation error: Set Attestation Policy failed"


def _attestation_policy_body(untrusted: bytes) -> tuple[str, bytes]:
    """trustee's ``SetPolicyInput``: string ``policy_id`` and ``policy`` (unpadded base64url)
    required, other members (``type``) ignored; any failure is trustee's AttestationError
    (the reason is logged)."""
    try:
        doc = strict_loads(untrusted)
    except ValueError as exc:
        log.warning("set attestation policy: body is not JSON")
        raise KbsAttestationError(_SET_POLICY_FAILED) from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("policy_id"), str)
        or not isinstance(doc.get("policy"), str)
    ):
        log.warning("set attestation policy: policy_id and policy must be strings")
        raise KbsAttestationError(_SET_POLICY_FAILED)
    try:
        return doc["policy_id"], b64url_decode(doc["policy"], allow_padding=False)
    except ValueError as exc:
        log.warning("set attestation policy: policy is not unpadded base64url")
        raise KbsAttestationError(_SET_POLICY_FAILED) from exc
