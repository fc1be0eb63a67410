"""The Attestation Agent's operations, independent of the RPC transport.

One :class:`AttestationAgent` per process. The primary attester is chosen at
construction (cheap file probes); additional devices (NVML may take seconds)
are probed lazily on first use, so the socket appears at once.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attestation.aa.config import AaConfig
from attestation.aa.errors import AaError, AaTokenError, InitDataBindError
from attestation.aa.measure import RuntimeMeasurer
from attestation.attester import Attester, DeviceAttester
from attestation.detect import HostView, detect_devices
from attestation.errors import AttestationError, UnsupportedPlatform
from attestation.initdata import InitData
from coco_common.b64 import b64url_encode
from coco_common.http import async_client
from coco_common.http_body import ACCEPT_DECODABLE, DECODABLE, BodyTooLarge, HttpBodyError, read_body

if TYPE_CHECKING:
    import httpx  # imported when the first token is fetched: ~0.1 s less start-up

__all__ = [
    "MAX_COCO_AS_RESPONSE",
    "MAX_RUNTIME_DATA",
    "AttestationAgent",
    "CompositeEvidenceSource",
    "HttpFactory",
    "MeasurementResult",
    "default_http_factory",
]

log = logging.getLogger(__name__)

#: Largest runtime data accepted by the evidence RPCs (platforms take at most 64 bytes;
#: SE passes a JSON request, so leave room).
MAX_RUNTIME_DATA = 64 * 1024
MAX_COCO_AS_RESPONSE = 1 << 20
#: Handshake attempts for GetToken("kbs") and the pause between them (upstream: 5, 1 s).
KBS_ATTEMPTS = 5
KBS_RETRY_DELAY = 1.0


class MeasurementResult(enum.IntEnum):
    """``attestation_agent.RuntimeMeasurementResult``."""

    OK = 0
    NOT_SUPPORTED = 1
    NOT_ENABLED = 2


HttpFactory = Callable[[str, str | None], "httpx.AsyncClient"]
"""``(base_url, cert_pem_or_None) -> AsyncClient`` — the one network seam."""


def default_http_factory(base_url: str, cert_pem: str | None) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if cert_pem:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=cert_pem)
        verify = ctx
    return async_client(verify=verify, timeout=30.0, trust_env=True)


def _http_error() -> type[httpx.HTTPError]:
    import httpx

    return httpx.HTTPError


def additional_evidence_string(evidence: dict[str, Any]) -> str:
    """The map of device evidence as the exact string that gets hashed and sent
    (``""`` when there are no devices)."""
    if not evidence:
        return ""
    return json.dumps(evidence, separators=(",", ":"), ensure_ascii=False)


class CompositeEvidenceSource:
    """What the RCAR client needs: the primary TEE's evidence for the primary
    report data, and every device's evidence (as one JSON string) for the
    device report data."""

    def __init__(self, primary: Attester, devices: Sequence[DeviceAttester]) -> None:
        self.tee = primary.tee
        self._primary = primary
        self._devices = list(devices)

    @property
    def device_attesters(self) -> list[DeviceAttester]:
        return list(self._devices)

    async def primary_evidence(self, report_data: bytes) -> Any:
        return await self._primary.get_evidence(report_data)

    async def additional_evidence(self, device_report_data: bytes) -> str:
        collected: dict[str, Any] = {}
        for dev in self._devices:
            collected[dev.tee] = await dev.get_evidence(device_report_data)
        return additional_evidence_string(collected)


class AttestationAgent:
    def __init__(
        self,
        config: AaConfig,
        primary: Attester,
        *,
        devices: Sequence[DeviceAttester] | None = None,
        platform: HostView | None = None,
        init_data: InitData | None = None,
        measurer: RuntimeMeasurer | None = None,
        http_factory: HttpFactory = default_http_factory,
        kbs_retry_delay: float = KBS_RETRY_DELAY,
    ) -> None:
        self.config = config
        self.primary = primary
        self.init_data = init_data
        self.measurer = measurer
        self._platform = platform
        self._devices: list[DeviceAttester] | None = list(devices) if devices is not None else None
        self._devices_lock = asyncio.Lock()
        self._http_factory = http_factory
        self._kbs_retry_delay = kbs_retry_delay

    # -- devices ---------------------------------------------------------------------------

    async def devices(self) -> list[DeviceAttester]:
        """Additional device attesters (probed once, on first use)."""
        async with self._devices_lock:
            if self._devices is None:
                self._devices = await detect_devices(self._platform)
                if self._devices:
                    log.info("additional devices: %s", ", ".join(d.tee for d in self._devices))
            return list(self._devices)

    # -- RPC operations --------------------------------------------------------------------

    def tee(self) -> str:
        return self.primary.tee

    async def additional_tees(self) -> list[str]:
        return [d.tee for d in await self.devices()]

    async def get_evidence(self, runtime_data: bytes) -> bytes:
        if len(runtime_data) > MAX_RUNTIME_DATA:
            raise AaError(f"runtime data of {len(runtime_data)} bytes is too large")
        evidence = await self.primary.get_evidence(bytes(runtime_data))
        return json.dumps(evidence, separators=(",", ":")).encode()

    async def get_additional_evidence(self, runtime_data: bytes) -> bytes:
        if len(runtime_data) > MAX_RUNTIME_DATA:
            raise AaError(f"runtime data of {len(runtime_data)} bytes is too large")
        source = CompositeEvidenceSource(self.primary, await self.devices())
        return (await source.additional_evidence(bytes(runtime_data))).encode()

    async def get_token(self, token_type: str) -> bytes:
        if token_type == "kbs":
            return await self._kbs_token()
        if token_type == "coco_as":
            return await self._coco_as_token()
        raise AaTokenError(f"unsupported token type {token_type!r}")

    async def extend_runtime_measurement(
        self, domain: str, operation: str, content: str, register_index: int | None = None
    ) -> MeasurementResult:
        if not self.config.eventlog.enable_eventlog:
            return MeasurementResult.NOT_ENABLED
        for name, value in (("domain", domain), ("operation", operation), ("content", content)):
            if "\n" in value:
                raise AaError(f"runtime measurement {name} must not contain a newline")
        if not domain or not operation:
            raise AaError("runtime measurement needs a domain and an operation")
        if " " in domain or " " in operation:
            raise AaError("runtime measurement domain and operation must not contain spaces")
        if self.measurer is None:
            return MeasurementResult.NOT_SUPPORTED
        index = self.config.eventlog.init_pcr if register_index is None else register_index
        try:
            await self.measurer.extend(domain, operation, content, index)
        except UnsupportedPlatform as exc:
            log.warning("runtime measurement not supported: %s", exc)
            return MeasurementResult.NOT_SUPPORTED
        return MeasurementResult.OK

    async def bind_init_data(self, digest: bytes) -> bool:
        """Bind ``digest`` to the platform's init-data field. Returns ``False``
        when the platform has no such field (logged, not an error); raises
        :class:`InitDataBindError` on a mismatch or failure."""
        try:
            await self.primary.bind_init_data(bytes(digest))
        except UnsupportedPlatform as exc:
            log.info("initdata binding is not supported on %s: %s", self.primary.tee, exc)
            return False
        except AttestationError as exc:
            raise InitDataBindError(f"binding initdata on {self.primary.tee} failed: {exc}") from exc
        log.info("initdata digest bound on %s", self.primary.tee)
        return True

    # -- tokens ----------------------------------------------------------------------------

    async def _kbs_token(self) -> bytes:
        kbs = self.config.kbs
        if kbs is None:  # upstream's text, then how to configure one
            raise AaTokenError(
                "kbs token config not configured in config file "
                "([token_configs.kbs] or agent.aa_kbc_params=cc_kbc::<url>)"
            )
        if not kbs.url.startswith(("http://", "https://")):  # accepted at start-up, as upstream
            raise AaTokenError(f"the KBS URL {kbs.url[:200]!r} is not an http(s) URL")
        from kbs_client import rcar  # on first use: keeps the AA's start-up lean
        from kbs_client.tee_key import TeeKeyPair

        source = CompositeEvidenceSource(self.primary, await self.devices())
        init_toml = self.init_data.text if self.init_data is not None else None
        key = TeeKeyPair.generate(kbs.tee_key_algorithm)
        try:
            async with self._http_factory(kbs.url, kbs.cert) as http:
                result = await rcar.attest(
                    http,
                    kbs.url,
                    source,
                    key=key,
                    init_data_toml=init_toml,
                    attempts=KBS_ATTEMPTS,
                    retry_delay=self._kbs_retry_delay,
                )
        except Exception as exc:
            raise AaTokenError(f"KBS handshake with {kbs.url} failed: {exc}") from exc
        for dev in source.device_attesters:
            try:
                await dev.on_attestation_accepted()
            except Exception as exc:  # the token is valid; a device hook must not lose it
                log.warning("%s: post-attestation step failed: %s", dev.tee, exc)
        return json.dumps({"token": result.token, "tee_keypair": key.private_pem()}).encode()

    async def _coco_as_token(self) -> bytes:
        cfg = self.config.coco_as
        if cfg is None:
            raise AaTokenError("no CoCo AS configured ([token_configs.coco_as])")
        evidence = await self.primary.get_evidence(b"")
        evidence_json = json.dumps(evidence, separators=(",", ":")).encode()
        # trustee's RESTful AS API (verification_requests), as current guest-components sends it
        body = {
            "verification_requests": [
                {
                    "tee": self.primary.tee,
                    "evidence": b64url_encode(evidence_json),
                }
            ],
            "policy_ids": [],
        }
        async with self._http_factory(cfg.url, None) as http:
            try:
                hdrs = {"Accept-Encoding": ACCEPT_DECODABLE}
                async with http.stream("POST", f"{cfg.url}/attestation", json=body, headers=hdrs) as resp:
                    data = await read_body(
                        resp, MAX_COCO_AS_RESPONSE, decode=DECODABLE, what="CoCo AS response"
                    )
            except BodyTooLarge:
                raise AaTokenError("CoCo AS response is too large") from None
            except HttpBodyError as exc:
                raise AaTokenError(f"CoCo AS request failed: {exc}") from None
            except _http_error() as exc:
                raise AaTokenError(f"CoCo AS request failed: {exc}") from exc
        if resp.status_code != 200:
            raise AaTokenError(f"CoCo AS answered HTTP {resp.status_code}")
        return data
