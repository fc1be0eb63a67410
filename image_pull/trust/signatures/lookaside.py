"""Fetch simple signatures: registries.d lookaside (file://, http(s)://) and the registry extension.

Lookaside layout: ``<base>/<repository>@<algo>=<hex>/signature-<n>`` for
n = 1, 2, ... until the first absent one (404 / missing file); the registry host
is not part of the path. At most :data:`MAX_SIGNATURES` are read, each bounded
by :data:`MAX_SIGNATURE_BYTES`. Any other failure (5xx, I/O error) is an error,
not "no more signatures": fail closed.

Registry extension (``X-Registry-Supports-Signatures: 1`` on ``/v2/``, as
OpenShift's registry serves): ``GET /extensions/v2/<repo>/signatures/<digest>``
returns ``{"signatures": [{"version": 2, "type": "atomic", "name": ..,
"content": "<base64>"}]}``.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from coco_common.files import FileTooLarge, read_bounded
from coco_common.http import async_client
from coco_common.http_body import ACCEPT_DECODABLE, DECODABLE, BodyTooLarge, HttpBodyError, read_body
from coco_common.strict_json import strict_loads
from image_pull.reference import Reference
from image_pull.registry import RegistryClient
from image_pull.trust.errors import SignatureRejected

__all__ = ["MAX_SIGNATURES", "MAX_SIGNATURE_BYTES", "fetch_lookaside", "fetch_registry_extension"]

MAX_SIGNATURES = 64
MAX_SIGNATURE_BYTES = 4 << 20
MAX_EXTENSION_BYTES = 16 << 20


def _legacy_or_simple(blob: bytes) -> bytes:
    """Signature storage format: a legacy OpenPGP blob, or ``\\x00simple-signing\\n`` + blob."""
    if blob.startswith(b"\x00"):
        name, sep, rest = blob[1:].partition(b"\n")
        if not sep or name != b"simple-signing":
            raise SignatureRejected("lookaside signature has an unsupported storage format")
        return rest
    return blob


async def fetch_lookaside(
    base: str, ref: Reference, digest: str, http: httpx.AsyncClient | None = None
) -> list[bytes]:
    algo, _, hexd = digest.partition(":")
    rel = f"{ref.repository}@{algo}={hexd}"
    out: list[bytes] = []
    u = urlsplit(base)
    if u.scheme == "file":
        if u.netloc not in ("", "localhost"):
            raise SignatureRejected("file:// lookaside URLs must not name a host")
        root = Path(unquote(u.path)) / rel
        for n in range(1, MAX_SIGNATURES + 1):
            p = root / f"signature-{n}"
            try:
                data = read_bounded(p, MAX_SIGNATURE_BYTES)
            except FileNotFoundError:
                break
            except FileTooLarge as exc:
                raise SignatureRejected("lookaside signature larger than 4 MiB") from exc
            except (OSError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                raise SignatureRejected(f"cannot read lookaside signature {p}: {why}") from exc
            out.append(_legacy_or_simple(data))
        return out
    if u.scheme not in ("http", "https"):
        raise SignatureRejected("lookaside URL must be file://, http:// or https://")
    if http is None:
        async with async_client(timeout=60.0, connect_timeout=30.0) as own:
            return await _fetch_http(base, rel, own)
    return await _fetch_http(base, rel, http)


async def _fetch_http(base: str, rel: str, http: httpx.AsyncClient) -> list[bytes]:
    out: list[bytes] = []
    for n in range(1, MAX_SIGNATURES + 1):
        url = f"{base.rstrip('/')}/{rel}/signature-{n}"
        try:
            hdrs = {"Accept-Encoding": ACCEPT_DECODABLE}
            async with http.stream("GET", url, follow_redirects=True, headers=hdrs) as resp:
                if resp.status_code == 404:
                    break
                if resp.status_code != 200:
                    raise SignatureRejected(
                        f"lookaside server answered HTTP {resp.status_code} for signature-{n}"
                    )
                buf = await read_body(
                    resp, MAX_SIGNATURE_BYTES, decode=DECODABLE, what=f"lookaside signature-{n}"
                )
        except BodyTooLarge as exc:
            raise SignatureRejected("lookaside signature larger than 4 MiB") from exc
        except HttpBodyError as exc:
            raise SignatureRejected(f"cannot fetch lookaside signature: {exc}") from exc
        except httpx.HTTPError as exc:
            raise SignatureRejected(f"cannot fetch lookaside signature: {type(exc).__name__}") from exc
        out.append(_legacy_or_simple(buf))
    return out


async def fetch_registry_extension(registry: RegistryClient, ref: Reference, digest: str) -> list[bytes]:
    """Signatures from the registry's signature extension, if it advertises one."""
    ping = await registry._authed_get(ref, "/v2/", {}, what="registry ping")
    try:
        supported = ping.headers.get("x-registry-supports-signatures") == "1"
    finally:
        await ping.aclose()
    if not supported:
        return []
    resp = await registry._authed_get(
        ref, f"/extensions/v2/{ref.repository}/signatures/{digest}", {}, what="registry signatures"
    )
    try:
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise SignatureRejected(f"registry signature extension answered HTTP {resp.status_code}")
        body = await registry._read_limited(resp, MAX_EXTENSION_BYTES, "registry signatures")
    finally:
        await resp.aclose()
    try:
        doc = strict_loads(body)
    except (ValueError, RecursionError) as exc:
        raise SignatureRejected("registry signature extension returned invalid JSON") from exc
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(sigs, list):
        raise SignatureRejected("registry signature extension: no signatures list")
    out: list[bytes] = []
    for s in sigs[:MAX_SIGNATURES]:
        if not isinstance(s, dict) or s.get("type") != "atomic" or s.get("version") != 2:
            continue
        try:
            out.append(base64.b64decode(str(s.get("content", "")), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise SignatureRejected("registry signature extension: content is not base64") from exc
    return out
