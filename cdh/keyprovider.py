"""ocicrypt key-provider ``UnWrapKey`` for layers encrypted to the
``attestation-agent`` provider.

Request: ``{"op":"keyunwrap","keywrapparams":{...},"keyunwrapparams":{"dc":...,
"annotation":"<b64 std of the annotation packet>"}}``. The annotation packet
(v2): ``{"version":"0.1.0","kid":"kbs:///...","wrapped_data":b64,"provider":"kbs",
"iv":b64,"wrap_type":"A256GCM"|"A256CTR","provider_settings":{},"annotations":{}}``.
The KEK is the resource ``kid``; the unwrapped bytes (ocicrypt's
PrivateLayerBlockCipherOptions JSON) are returned as
``{"keyunwrapresults":{"optsdata":[<integers>]}}`` — serde's ``Vec<u8>``
form that ocicrypt-rs expects, not base64.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdh.crypto import CryptoError, b64_std, strict_json, unwrap
from cdh.errors import CdhError, KeyProviderError
from cdh.kbc import ResourceGetter
from cdh.sealed_secret import KmsProvider

__all__ = ["MAX_KEYPROVIDER_REQUEST_BYTES", "AnnotationPacket", "KbsKeyProvider", "parse_annotation_packet"]

MAX_KEYPROVIDER_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class AnnotationPacket:
    kid: str
    wrapped_data: bytes
    iv: bytes
    wrap_type: str
    provider: str = "kbs"
    version: str = "0.1.0"
    provider_settings: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, Any] = field(default_factory=dict)


_PACKET_KEYS = {
    "version",
    "kid",
    "wrapped_data",
    "provider",
    "iv",
    "wrap_type",
    "provider_settings",
    "annotations",
}


def parse_annotation_packet(untrusted: bytes) -> AnnotationPacket:
    try:
        p = strict_json(untrusted)
    except CryptoError as exc:
        raise KeyProviderError(f"annotation packet: {exc}") from exc
    if not isinstance(p, dict):
        raise KeyProviderError("annotation packet must be a JSON object")
    extra = set(p) - _PACKET_KEYS
    if extra:
        raise KeyProviderError(f"unknown fields in annotation packet: {sorted(extra)}")
    kid, wrap_type = p.get("kid"), p.get("wrap_type")
    provider, version = p.get("provider", "kbs"), p.get("version", "0.1.0")
    if not all(isinstance(v, str) for v in (kid, wrap_type, provider, version)):
        raise KeyProviderError("annotation packet needs string kid, wrap_type, provider, version")
    settings, annotations = p.get("provider_settings", {}), p.get("annotations", {})
    if not isinstance(settings, dict) or not isinstance(annotations, dict):
        raise KeyProviderError("annotation packet provider_settings/annotations must be objects")
    if version != "0.1.0":
        raise KeyProviderError(f"unsupported annotation packet version {version!r}")
    try:
        wrapped, iv = b64_std(p.get("wrapped_data")), b64_std(p.get("iv"))
    except CryptoError as exc:
        raise KeyProviderError(f"annotation packet: {exc}") from exc
    assert isinstance(kid, str) and isinstance(wrap_type, str) and isinstance(provider, str)
    return AnnotationPacket(kid, wrapped, iv, wrap_type, provider, version, settings, annotations)


class KbsKeyProvider:
    """The ocicrypt key provider of the CDH: the key-provider protocol's ``keyunwrap``
    operation, with keys from KBS resources (provider ``kbs``) or a KMS."""

    def __init__(self, resources: ResourceGetter, *, kms: Mapping[str, KmsProvider] | None = None) -> None:
        self.resources = resources
        self.kms = dict(kms or {})

    async def unwrap_packet(self, packet: AnnotationPacket) -> bytes:
        if packet.provider == "kbs":
            try:
                kek = await self.resources.get_resource(packet.kid)
            except CdhError as exc:
                raise KeyProviderError(f"cannot get the key {packet.kid!r}: {exc}") from exc
            try:
                return unwrap(kek, packet.iv, packet.wrapped_data, packet.wrap_type)
            except CryptoError as exc:
                raise KeyProviderError(f"cannot unwrap the layer key with {packet.kid!r}: {exc}") from exc
        kms = self.kms.get(packet.provider)
        if kms is None:
            raise KeyProviderError(f"unknown key provider {packet.provider!r}")
        return await kms.decrypt(packet.wrapped_data, packet.kid, packet.annotations)

    async def unwrap_key(self, annotation: bytes) -> bytes:
        """The image_pull hook (:class:`image_pull.hooks.KeyUnwrapper`): ``annotation``
        is the layer annotation value (base64 of the packet, or the packet JSON);
        returns the raw optsdata bytes."""
        a = annotation.strip()
        if not a.startswith(b"{"):
            try:
                a = b64_std(a.decode("ascii"))
            except (CryptoError, UnicodeDecodeError) as exc:
                raise KeyProviderError("layer key annotation is not base64") from exc
        return await self.unwrap_packet(parse_annotation_packet(a))

    async def handle_request(self, untrusted_request: bytes) -> bytes:
        """Answer one ``KeyProviderKeyWrapProtocolInput`` payload (the UnWrapKey RPC)."""
        if len(untrusted_request) > MAX_KEYPROVIDER_REQUEST_BYTES:
            raise KeyProviderError("key-provider request too large")
        try:
            req = strict_json(untrusted_request)
        except CryptoError as exc:
            raise KeyProviderError(f"key-provider request: {exc}") from exc
        if not isinstance(req, dict) or req.get("op") != "keyunwrap":
            raise KeyProviderError('key-provider request op must be "keyunwrap"')
        params = req.get("keyunwrapparams")
        ann = params.get("annotation") if isinstance(params, dict) else None
        if isinstance(ann, str):  # ocicrypt-rs / Go: base64 of the packet
            try:
                packet_bytes = b64_std(ann)
            except CryptoError as exc:
                raise KeyProviderError(f"annotation: {exc}") from exc
        elif isinstance(ann, list) and all(isinstance(b, int) and 0 <= b < 256 for b in ann):
            packet_bytes = bytes(ann)  # serde's Vec<u8> form, accepted as well
        else:
            raise KeyProviderError("key-provider request lacks keyunwrapparams.annotation")
        optsdata = await self.unwrap_packet(parse_annotation_packet(packet_bytes))
        return json.dumps({"keyunwrapresults": {"optsdata": list(optsdata)}}, separators=(",", ":")).encode()
