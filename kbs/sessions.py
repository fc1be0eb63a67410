"""RCAR sessions (namespace ``kbs_protocol_session``): created by /auth, made
attested by /attest, never extended, gone after ``timeout`` minutes."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass, field, replace

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
        return json.dumps(
            {
                "id": self.id,
                "tee": self.tee,
                "nonce": self.nonce,
                "expires_at": self.expires_at,
                "hash_algorithm": self.hash_algorithm,
                "token": self.token,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            tee=d["tee"],
            nonce=d["nonce"],
            expires_at=float(d["expires_at"]),
            hash_algorithm=d.get("hash_algorithm", "sha384"),
            token=d.get("token"),
        )


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
        await self._store.set(NS_SESSION, s.id, s.to_bytes(), ttl_s=self.timeout_s)
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
        await self._store.set(NS_SESSION, s.id, done.to_bytes(), ttl_s=max(0.001, s.expires_at - t))
        return done

    async def purge_expired(self) -> int:
        return await self._store.purge_expired()

    async def count(self) -> int:
        return len(await self._store.keys(NS_SESSION))
