"""``api-server-rest``: the guest's loopback HTTP front for CDH and AA.

    GET  /info
    GET  /cdh/resource/<repo>/<type>/<tag>           -> CDH GetResource(kbs:///repo/type/tag)
    GET  /aa/token?token_type=kbs                     -> AA GetToken
    GET  /aa/evidence?runtime_data=<s>[&encoding=base64]
    GET  /aa/additional-evidence?runtime_data=<s>[&encoding=base64]
    POST /aa/aael  {"domain","operation","content"}   -> AA ExtendRuntimeMeasurement

Only loopback peers are served (others get 403). 400 for missing
parameters, 404 for unknown paths or disabled features, 500 with the error
text when the backend fails.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from cdh.aa import AaClient
from cdh.crypto import CryptoError, b64url, strict_json
from cdh.errors import ResourceError
from cdh.kbc import parse_resource_uri
from coco_common.cli import add_log_options, add_version, configure_logging
from coco_rpc import AA_SERVICE, AA_SOCKET, CDH_SOCKET, GET_RESOURCE_SERVICE, RpcClient, RpcError, connect
from coco_rpc.protos import api_pb2
from coco_rpc.protos import attestation_agent_pb2 as aa_pb2

__all__ = ["VERSION", "main", "make_app"]

log = logging.getLogger("api-server-rest")

VERSION = "0.1.0"
MAX_BODY_BYTES = 64 << 10
_FEATURES = {"resource": {"resource"}, "attestation": {"attestation"}, "all": {"resource", "attestation"}}


def _loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback peers only; a backend failure is a 500 with its message."""
    if not _loopback(request.remote):
        return web.Response(status=403, text="forbidden: loopback clients only")
    try:
        return await handler(request)
    except RpcError as exc:
        return web.Response(status=500, text=exc.message)


def _runtime_data(request: web.Request) -> bytes:
    rd = request.query.get("runtime_data")
    if rd is None:
        raise web.HTTPBadRequest(text="runtime_data is required")
    if request.query.get("encoding") == "base64":
        try:
            return b64url(rd)
        except CryptoError as exc:
            raise web.HTTPBadRequest(text="runtime_data is not URL-safe base64") from exc
    return rd.encode()


class _Api:
    """The handlers, over one AA client and one CDH client (made on the running loop:
    gRPC channels need one)."""

    def __init__(self, cdh_addr: str, aa_addr: str, features: str) -> None:
        enabled = _FEATURES.get(features)
        if enabled is None:
            raise ValueError(f"unknown feature set {features!r} (resource, attestation, all)")
        self.enabled = enabled
        self.features = features
        self.cdh_addr = cdh_addr
        self.aa_addr = aa_addr
        self.aa = AaClient(aa_addr)
        self._cdh: RpcClient | None = None

    def cdh(self) -> RpcClient:
        if self._cdh is None:
            self._cdh = connect(self.cdh_addr)
        return self._cdh

    def need(self, feature: str) -> None:
        if feature not in self.enabled:
            raise web.HTTPNotFound(
                text=f"feature {feature!r} is not enabled (start api-server-rest with -f {feature} or -f all)"
            )

    async def info(self, request: web.Request) -> web.Response:
        body: dict[str, object] = {"version": VERSION, "feature": self.features}
        if "attestation" in self.enabled:
            try:
                client = connect(self.aa_addr)
                try:
                    t = await client.call(
                        AA_SERVICE,
                        "GetTeeType",
                        aa_pb2.GetTeeTypeRequest(),
                        aa_pb2.GetTeeTypeResponse,
                        timeout=5,
                    )
                    body["tee"] = t.tee
                finally:
                    await client.close()
            except RpcError:
                pass
        return web.json_response(body)

    async def resource(self, request: web.Request) -> web.Response:
        self.need("resource")
        uri = f"kbs:///{request.match_info['path']}"
        try:
            parse_resource_uri(uri)
        except ResourceError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        r = await self.cdh().call(
            GET_RESOURCE_SERVICE,
            "GetResource",
            api_pb2.GetResourceRequest(ResourcePath=uri),
            api_pb2.GetResourceResponse,
            timeout=50,
        )
        return web.Response(body=r.Resource, content_type="application/octet-stream")

    async def token(self, request: web.Request) -> web.Response:
        self.need("attestation")
        tt = request.query.get("token_type")
        if not tt:
            raise web.HTTPBadRequest(text="token_type is required")
        return web.Response(body=await self.aa.get_token(tt), content_type="application/octet-stream")

    async def evidence(self, request: web.Request) -> web.Response:
        self.need("attestation")
        ev = await self.aa.get_evidence(_runtime_data(request))
        return web.Response(body=ev, content_type="application/json")

    async def additional(self, request: web.Request) -> web.Response:
        self.need("attestation")
        ev = await self.aa.get_additional_evidence(_runtime_data(request))
        return web.Response(body=ev, content_type="application/json")

    async def aael(self, request: web.Request) -> web.Response:
        self.need("attestation")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=len(raw))
        try:
            obj = strict_json(raw)
            d, o, c = obj["domain"], obj["operation"], obj["content"]
            if not all(isinstance(x, str) for x in (d, o, c)):
                raise TypeError
        except (CryptoError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(text='body must be {"domain","operation","content"} strings') from exc
        res = await self.aa.extend_runtime_measurement(d, o, c)
        return web.json_response({"result": res.name})

    async def cleanup(self, app: web.Application) -> None:
        await self.aa.close()
        if self._cdh is not None:
            await self._cdh.close()


def make_app(cdh_addr: str, aa_addr: str, features: str = "resource") -> web.Application:
    api = _Api(cdh_addr, aa_addr, features)
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/info", api.info)
    app.router.add_get("/cdh/resource/{path:[^/]+/[^/]+/[^/]+}", api.resource)
    app.router.add_get("/aa/token", api.token)
    app.router.add_get("/aa/evidence", api.evidence)
    app.router.add_get("/aa/additional-evidence", api.additional)
    app.router.add_post("/aa/aael", api.aael)
    app.on_cleanup.append(api.cleanup)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="api-server-rest", description="CoCo guest REST API (loopback only)")
    ap.add_argument("-b", "--bind", default="127.0.0.1:8006", help="host:port (default: %(default)s)")
    ap.add_argument(
        "-f",
        "--features",
        default="resource",
        choices=sorted(_FEATURES),
        help="API groups served (default: %(default)s; /aa/* needs attestation or all)",
    )
    ap.add_argument("-c", "--cdh_addr", "--cdh-addr", default=CDH_SOCKET, help="CDH (default: %(default)s)")
    ap.add_argument("-a", "--aa_addr", "--aa-addr", default=AA_SOCKET, help="AA (default: %(default)s)")
    add_version(ap)
    add_log_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args)
    host, _, port = args.bind.rpartition(":")
    if not host or not port.isdigit():
        print(f"api-server-rest: bad --bind {args.bind!r} (want host:port)", file=sys.stderr)
        return 1
    if not _loopback(host.strip("[]")):
        log.warning("binding to non-loopback %s; non-loopback peers are still refused", host)
    web.run_app(make_app(args.cdh_addr, args.aa_addr, args.features), host=host.strip("[]"), port=int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
