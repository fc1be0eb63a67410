"""RCAR sessions (namespace ``kbs_protocol_session``): created by /auth, made
attested by /attest, never extended, gone after ``timeout`` minutes.

Stored as trustee v0.21 stores them (``SessionStatus``, serde's external
tagging): ``{"Authed":{"request":{...},"challenge":{"nonce","extra-params"},
"id","timeout":<RFC 3339>}}`` then ``{"Attested":{"token","id","timeout"}}``,
so replicas of this KBS and trustee's can share one session store."""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .storage import NS_SESSION, KvStore

__all__ = ["Session", "SessionStore"]


@dataclass(frozen=True)
class Session:
    #: the ``kbs-session-id`` cookie: once attested it is a bearer credential, so not in repr
    id: str = field(repr=False)
    tee: str
    nonce: str
    expires_at: float
    hash_algorithm: str = "sha384"
    token: str | None = field(default=None, repr=False)

    @property
    def attested(self) -> bool:
        return self.token is not None

    def to_bytes(self) -> bytes:
        timeout = _rfc3339(self.expires_at)
        if self.token is not None:
            return json.dumps({"Attested": {"token": self.token, "id": self.id, "timeout": timeout}}).encode()
        extra: Any = (
            {"selected-hash-algorithm": self.hash_algorithm} if self.hash_algorithm != "sha384" else ""
        )
        return json.dumps(
            {
                "Authed": {
                    "request": {"version": "0.4.0", "tee": self.tee, "extra-params": ""},
                    "challenge": {"nonce": self.nonce, "extra-params": extra},
                    "id": self.id,
                    "timeout": timeout,
                }
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        """Parse a stored session (trustee's form; raises ValueError/KeyError/TypeError)."""
        d = json.loads(raw)
        if not isinstance(d, dict) or len(d) != 1:
            raise ValueError("not a session record")
        ((tag, body),) = d.items()
        if not isinstance(body, dict):
            raise ValueError("not a session record")
        expires = _parse_rfc3339(body["timeout"])
        sid = body["id"]
        if not isinstance(sid, str):
            raise TypeError("session id")
        if tag == "Attested":
            token = body["token"]
            if not isinstance(token, str):
                raise TypeError("token")
            # trustee keeps only the token once attested; the TEE and nonce are no longer needed
            return cls(id=sid, tee="", nonce="", expires_at=expires, token=token)
        if tag != "Authed":
            raise ValueError("unknown session state")
        req, ch = body["request"], body["challenge"]
        tee, nonce = req["tee"], ch["nonce"]
        if not isinstance(tee, str) or not isinstance(nonce, str):
            raise TypeError("tee / nonce")
        extra = ch.get("extra-params")
        alg = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
        if not isinstance(alg, str):
            alg = "sha384"
        return cls(id=sid, tee=tee, nonce=nonce, expires_at=expires, hash_algorithm=alg.lower())


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(t: float) -> str:
    """``time``'s RFC 3339 form, as trustee writes it: UTC, ``Z``, fraction without trailing zeros."""
    dt = datetime.fromtimestamp(t, UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _parse_rfc3339(v: Any) -> float:
    m = _RFC3339.match(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError("session timeout is not RFC 3339")
    day, hms, frac, tz = m.groups()
    dt = datetime.fromisoformat(f"{day}T{hms}{'+00:00' if tz in ('Z', 'z') else tz}")
    return dt.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def _valid_id(sid: str) -> bool:
    return len(sid) == 32 and all(c in "0123456789abcdef" for c in sid)


class SessionStore:
    def __init__(self, store: KvStore, *, timeout_min: int = 5) -> None:
        self._store = store
        self.timeout_s = timeout_min * 60

    async def create(
        self, tee: str, *, now: float | None = None, hash_algorithm: str = "sha384", nonce: str | None = None
    ) -> Session:
        t = time.time() if now is None else now
        s = Session(
            id=uuid.uuid4().hex,
            tee=tee,
            nonce=nonce if nonce is not None else base64.b64encode(os.urandom(32)).decode(),
            expires_at=t + self.timeout_s,
            hash_algorithm=hash_algorithm,
        )
        await self._store.set(NS_SESSION, s.id, s.to_bytes(), ttl_s=self._ttl(self.timeout_s))
        return s

    async def get(self, untrusted_id: str | None, *, now: float | None = None) -> Session | None:
        if not untrusted_id or not _valid_id(untrusted_id):
            return None
        raw = await self._store.get(NS_SESSION, untrusted_id)
        if raw is None:
            return None
        try:
            s = Session.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires_at <= (time.time() if now is None else now):
            await self._store.delete(NS_SESSION, s.id)
            return None
        return s

    async def mark_attested(self, s: Session, token: str, *, now: float | None = None) -> Session:
        t = time.time() if now is None else now
        done = replace(s, token=token)
        await self._store.set(
            NS_SESSION, s.id, done.to_bytes(), ttl_s=self._ttl(max(0.001, s.expires_at - t))
        )
        return done

    def _ttl(self, ttl_s: float) -> float | None:
        # stores that expire values themselves get the TTL; on the others the record is written
        # exactly as trustee writes it (its own timeout inside) and purge_expired removes it
        return ttl_s if getattr(self._store, "native_ttl", False) else None

    async def purge_expired(self, *, now: float | None = None, limit: int = 10_000) -> int:
        n = await self._store.purge_expired()
        if getattr(self._store, "native_ttl", False):
            return n
        t = time.time() if now is None else now
        for sid in (await self._store.keys(NS_SESSION))[:limit]:
            raw = await self._store.get(NS_SESSION, sid)
            if raw is None:
                continue
            try:
                expired = Session.from_bytes(raw).expires_at <= t
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge (trustee skips records it cannot parse, too)
            if expired and await self._store.delete(NS_SESSION, sid):
                n += 1
        return n

    async def count(self) -> int:
        return len(await self._store.keys(NS_SESSION))
