"""Admin authentication and authorization (reference §6.2): the current
bearer-JWT identity providers with role-based regex ACLs, the older
Ed25519 persona keys, InsecureAllowAll (explicit, logged loudly) and DenyAll."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from coco_common.files import read_bounded
from kbs_protocol.errors import TokenError
from kbs_protocol.jws import PublicVerifyKey, decode_unverified, verify

from .config import AdminConfig
from .errors import AdminAccessDenied, KbsConfigError
from .jwks import load_jwk_set

__all__ = ["AdminAuthorizer"]

log = logging.getLogger(__name__)
LEEWAY_S = 60


def _algs_for(key: PublicVerifyKey) -> tuple[str, ...]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ES256", "ES384", "ES512")
    return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def _load_public_key(uri: str, base_dir: str) -> PublicVerifyKey:
    text: bytes
    if uri.lstrip().startswith("-----BEGIN"):
        text = uri.encode()
    else:
        p = Path(uri.removeprefix("file://"))
        if not p.is_absolute():
            p = Path(base_dir) / p
        try:
            text = read_bounded(p, 65536)
        except OSError as exc:
            raise KbsConfigError(f"cannot read admin public key {uri}: {exc.strerror}") from exc
        except ValueError as exc:  # too large, not a regular file
            raise KbsConfigError(f"cannot read admin public key {uri}: {exc}") from exc
    try:
        key = serialization.load_pem_public_key(text)
    except ValueError as exc:
        raise KbsConfigError(f"admin public key {uri} is not a PEM public key") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise KbsConfigError("admin public keys must be Ed25519, EC or RSA")
    return key


@dataclass(frozen=True)
class _Idp:
    issuer: str | None
    audience: str | None
    key: PublicVerifyKey | None
    jwks: dict[str, PublicVerifyKey]


class AdminAuthorizer:
    def __init__(self, cfg: AdminConfig, *, base_dir: str = ".") -> None:
        self.mode = cfg.mode
        self._idps: list[_Idp] = []
        self._personas: list[tuple[str, PublicVerifyKey]] = []
        self._acls = [(a.role, re.compile(a.allowed_endpoints)) for a in cfg.acls]
        for idp in cfg.identity_providers:
            key = _load_public_key(idp.public_key_uri, base_dir) if idp.public_key_uri else None
            jwks = load_jwk_set(idp.jwk_set_uri, base_dir) if idp.jwk_set_uri else {}
            self._idps.append(_Idp(idp.issuer, idp.audience, key, jwks))
        for p in cfg.personas:
            self._personas.append((p.id, _load_public_key(p.public_key_path, base_dir)))
        if self.mode == "InsecureAllowAll":
            log.warning(
                "INSECURE: admin API open to everyone ([admin] authorization_mode = InsecureAllowAll)"
            )

    def _token(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise AdminAccessDenied("no bearer token")
        tok = authorization[len("Bearer ") :].strip()
        if not tok or len(tok) > 64 * 1024:
            raise AdminAccessDenied("no bearer token")
        return tok

    @staticmethod
    def _times(claims: dict[str, Any], now: float) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AdminAccessDenied("token has no numeric exp")
        if now > exp + LEEWAY_S:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(exp)))
            raise AdminAccessDenied(f"token expired at {when}; mint a new one")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + LEEWAY_S < nbf:
            raise AdminAccessDenied("token not yet valid")

    def _authenticate(self, tok: str, now: float) -> str:
        """Returns the role."""
        try:
            header, _ = decode_unverified(tok)
        except TokenError as exc:
            raise AdminAccessDenied("malformed token") from exc
        mismatch = ""
        for idp in self._idps:
            keys: Sequence[PublicVerifyKey]
            kid = header.get("kid")
            if isinstance(kid, str) and kid in idp.jwks:
                keys = [idp.jwks[kid]]
            else:
                keys = [idp.key] if idp.key is not None else []
            for key in keys:
                try:
                    _, claims = verify(tok, key, algorithms=_algs_for(key))
                except TokenError:
                    continue
                self._times(claims, now)
                # as trustee: an issuer or audience mismatch moves on to the next identity provider
                if idp.issuer is not None and claims.get("iss") != idp.issuer:
                    iss = claims.get("iss")
                    mismatch = (
                        f"token issuer {str(iss)[:64]!r} is not {idp.issuer!r}"
                        if iss is not None
                        else f"token has no 'iss' (wanted {idp.issuer!r}); --auth-private-key tokens have "
                        'none and work only with [admin] type = "Simple"'
                    )
                    continue
                if idp.audience is not None:
                    aud = claims.get("aud")
                    auds = aud if isinstance(aud, list) else [aud]
                    if idp.audience not in auds:
                        mismatch = f"token audience does not include {idp.audience!r}"
                        continue
                role = claims.get("role")
                if not isinstance(role, str):
                    raise AdminAccessDenied(
                        "token has no role claim; add a 'role' that an [admin.authorization.regex_acl] "
                        "acls entry names"
                    )
                return role
        if mismatch:
            raise AdminAccessDenied(f"token not accepted by a trusted identity provider: {mismatch}")
        raise AdminAccessDenied("token not signed by a trusted identity provider")

    def _legacy(self, tok: str, now: float) -> str:
        for pid, key in self._personas:
            try:
                _, claims = verify(tok, key, algorithms=("EdDSA",))
            except TokenError:
                continue
            self._times(claims, now)
            return pid
        raise AdminAccessDenied("token not signed by an admin key")

    def check(self, request_uri: str, authorization: str | None, *, now: float | None = None) -> str:
        """Raise :class:`AdminAccessDenied` unless the request may proceed; returns the role/persona."""
        t = time.time() if now is None else now
        if self.mode == "InsecureAllowAll":
            return "insecure"
        if self.mode == "DenyAll":
            raise AdminAccessDenied("admin API disabled (DenyAll)")
        tok = self._token(authorization)
        role = self._legacy(tok, t) if self.mode == "Legacy" else self._authenticate(tok, t)
        if self.mode == "Legacy" and not self._acls:
            return role
        for r, rx in self._acls:
            if r == role and rx.fullmatch(request_uri):
                return role
        raise AdminAccessDenied(f"role {role!r} may not access this endpoint")
