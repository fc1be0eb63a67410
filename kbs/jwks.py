"""JWK set files named in the config: ``[attestation_token] trusted_jwk_sets``
and the admin identity providers' ``jwk_set_uri`` (one loader for both)."""

from __future__ import annotations

import logging
from pathlib import Path

from coco_common.files import FileTooLarge, read_bounded
from coco_common.strict_json import strict_loads
from kbs_protocol.errors import TokenError
from kbs_protocol.jws import PublicVerifyKey, jwk_to_public_key

from .errors import KbsConfigError

__all__ = ["MAX_JWKS_BYTES", "load_jwk_set"]

log = logging.getLogger(__name__)

#: largest JWK set file read
MAX_JWKS_BYTES = 1024 * 1024


def load_jwk_set(uri: str, base_dir: str | None = None) -> dict[str, PublicVerifyKey]:
    """``kid`` -> public key for a local JWK set (a path or ``file://`` URI; relative
    paths are taken from ``base_dir`` when given). Keys without a ``kid`` are
    skipped; anything malformed is a :class:`KbsConfigError`."""
    if uri.startswith(("http://", "https://")):
        return _parse(uri, _fetch(uri))
    p = Path(uri.removeprefix("file://"))
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    try:
        raw = read_bounded(p, MAX_JWKS_BYTES)
    except FileTooLarge as exc:
        raise KbsConfigError(f"JWK set {uri} is larger than {MAX_JWKS_BYTES} bytes") from exc
    except OSError as exc:
        raise KbsConfigError(f"cannot read JWK set {uri}: {exc.strerror}") from exc
    except ValueError as exc:  # not a regular file
        raise KbsConfigError(f"cannot read JWK set {uri}: {exc}") from exc
    return _parse(uri, raw)


def _fetch(uri: str) -> bytes:
    """A remote JWK set (trustee fetches ``https://`` sets at start, e.g. Intel Trust Authority's
    portal), read up to :data:`MAX_JWKS_BYTES`; ``http://`` is for local test servers."""
    import httpx

    from coco_common.http import sync_client
    from coco_common.http_body import DECODABLE, BodyTooLarge, HttpBodyError, read_body_sync

    if uri.startswith("http://"):
        log.warning("INSECURE: JWK set %s is fetched over plain HTTP", uri)
    try:
        with sync_client(timeout=15) as c, c.stream("GET", uri) as r:
            if r.status_code != 200:
                raise KbsConfigError(f"JWK set {uri}: HTTP {r.status_code}")
            return read_body_sync(r, MAX_JWKS_BYTES, decode=DECODABLE, what=f"JWK set {uri}")
    except BodyTooLarge as exc:
        raise KbsConfigError(f"JWK set {uri} is larger than {MAX_JWKS_BYTES} bytes") from exc
    except HttpBodyError as exc:
        raise KbsConfigError(f"cannot fetch JWK set {uri}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise KbsConfigError(f"cannot fetch JWK set {uri}: {type(exc).__name__}") from exc


def _parse(uri: str, raw: bytes) -> dict[str, PublicVerifyKey]:
    try:
        doc = strict_loads(raw)
    except ValueError as exc:
        raise KbsConfigError(f"JWK set {uri} is not valid JSON") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise KbsConfigError(f"JWK set {uri} has no keys array")
    out: dict[str, PublicVerifyKey] = {}
    for k in keys:
        if not isinstance(k, dict):
            raise KbsConfigError(f"JWK set {uri}: an entry is not a JSON object")
        kid = k.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            out[kid] = jwk_to_public_key(k)
        except TokenError as exc:
            raise KbsConfigError(f"JWK set {uri}: bad key {kid[:64]!r}") from exc
    return out
