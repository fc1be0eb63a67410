"""Registry credentials and the auth challenge/token protocol, without I/O.

* containers ``auth.json`` (``{"auths": {"<host[/path]>": {"auth": "<b64 user:pass>"}}}``):
  longest-prefix lookup ``host/ns/repo`` -> ``host/ns`` -> ``host``, legacy keys
  normalised (scheme and path stripped, Docker Hub aliases unified).
* ``WWW-Authenticate`` challenge parsing (RFC 7235 auth-params, several challenges).
* Bearer token responses (``token``/``access_token``, ``expires_in``, ``issued_at``).

Secrets live in :class:`Credentials` whose ``repr`` never shows them.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coco_common.strict_json import strict_loads
from image_pull.errors import AuthError
from image_pull.reference import DOCKER_HUB, Reference

__all__ = [
    "MAX_AUTH_FILE",
    "MAX_TOKEN_RESPONSE",
    "AuthChallenge",
    "AuthFile",
    "Credentials",
    "RegistryToken",
    "parse_challenges",
    "parse_token_response",
]

MAX_AUTH_FILE = 1 << 20
MAX_TOKEN_RESPONSE = 1 << 20
MIN_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True)
class Credentials:
    username: str = field(repr=False)
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def _normalize_key(key: str) -> str:
    k = key
    for scheme in ("https://", "http://"):
        if k.startswith(scheme):
            k = k[len(scheme) :]
            # legacy form: drop any path (``https://index.docker.io/v1/``)
            k = k.split("/", 1)[0]
            break
    host, sep, path = k.partition("/")
    h = host.lower()
    if h in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        h = DOCKER_HUB
    return h + (sep + path.rstrip("/") if path else "")


@dataclass(frozen=True)
class AuthFile:
    """Parsed auth.json: normalised key -> credentials."""

    entries: Mapping[str, Credentials] = field(default_factory=dict, repr=False)

    @classmethod
    def from_bytes(cls, untrusted: bytes) -> AuthFile:
        if len(untrusted) > MAX_AUTH_FILE:
            raise AuthError("auth file is larger than 1 MiB")
        try:
            doc = strict_loads(untrusted.decode("utf-8"))
        except ValueError:  # also duplicate keys and runaway nesting
            raise AuthError("auth file is not valid JSON") from None  # no cause: it quotes credentials
        if not isinstance(doc, dict):
            raise AuthError("auth file is not a JSON object")
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise AuthError("auth file: 'auths' must be an object")
        entries: dict[str, Credentials] = {}
        for key, val in auths.items():
            if not isinstance(val, dict):
                raise AuthError("auth file: each 'auths' entry must be an object")
            enc = val.get("auth")
            if not enc:
                continue  # credential-helper entry or identity token only: not supported
            if not isinstance(enc, str):
                raise AuthError("auth file: 'auth' must be a string")
            try:
                raw = base64.b64decode(enc, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                # no cause: the decoder's error may quote the credential
                raise AuthError("auth file: an 'auth' value is not base64 of user:password") from None
            user, sep, password = raw.partition(":")
            if not sep:
                continue
            norm = _normalize_key(key)
            # the first of several legacy spellings wins (exact keys are preferred)
            if norm not in entries or key == norm:
                entries[norm] = Credentials(user, password.rstrip("\0").rstrip("\n"))
        return cls(entries)

    def lookup(self, ref: Reference) -> Credentials | None:
        """Most specific match: host/ns/repo, host/ns, ..., host."""
        parts = ref.repository.split("/")
        for n in range(len(parts), 0, -1):
            key = f"{ref.registry}/{'/'.join(parts[:n])}"
            if key in self.entries:
                return self.entries[key]
        return self.entries.get(ref.registry)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class AuthChallenge:
    scheme: str  # lowercased: "bearer", "basic", ...
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*")
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(headers: list[str]) -> list[AuthChallenge]:
    """Parse WWW-Authenticate header values into challenges (lenient on junk)."""
    out: list[AuthChallenge] = []
    for header in headers:
        pos = 0
        text = header[:8192]
        while pos < len(text):
            while pos < len(text) and text[pos] in " ,":
                pos += 1
            m = _SCHEME_RE.match(text, pos)
            if m is None:
                break
            scheme = m.group(1).lower()
            pos = m.end()
            params: dict[str, str] = {}
            while True:
                pm = _PARAM_RE.match(text, pos)
                if pm is None:
                    break
                val = pm.group(2)
                val = re.sub(r"\\(.)", r"\1", val) if val is not None else pm.group(3)
                params[pm.group(1).lower()] = val
                pos = pm.end()
                if pos < len(text) and text[pos] == ",":
                    # a comma may separate params or challenges: peek for "name="
                    nxt = _PARAM_RE.match(text, pos + 1)
                    if nxt is not None:
                        pos += 1
                        continue
                break
            out.append(AuthChallenge(scheme, params))
    return out


@dataclass(frozen=True)
class RegistryToken:
    token: str = field(repr=False)
    expires_at: float  # time.monotonic() based

    def valid(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) < self.expires_at - 5.0


def parse_token_response(untrusted_body: bytes, *, now_monotonic: float, now_wall: float) -> RegistryToken:
    if len(untrusted_body) > MAX_TOKEN_RESPONSE:
        raise AuthError("token response larger than 1 MiB")
    try:
        doc: Any = strict_loads(untrusted_body.decode("utf-8"))
    except ValueError:  # also duplicate keys and runaway nesting (a RecursionError escaped)
        raise AuthError("token endpoint did not return JSON") from None  # no cause: it may quote the token
    if not isinstance(doc, dict):
        raise AuthError("token response is not a JSON object")
    tok = doc.get("token") or doc.get("access_token")
    if not isinstance(tok, str) or not tok:
        raise AuthError("token response has no token")
    expires_in = doc.get("expires_in", MIN_TOKEN_LIFETIME)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        expires_in = MIN_TOKEN_LIFETIME
    lifetime = max(float(expires_in), MIN_TOKEN_LIFETIME)
    issued = doc.get("issued_at")
    age = 0.0
    if isinstance(issued, str):
        try:
            ts = datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
            age = max(0.0, now_wall - ts)
        except ValueError:
            age = 0.0
    return RegistryToken(tok, now_monotonic + max(lifetime - age, 0.0))
