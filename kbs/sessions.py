"""RCAR sessions (namespace ``kbs_protocol_session``): created by /auth, made
attested by /attest, never extended, gone after ``timeout`` minutes.

Bounded: each replica holds at most ``max_sessions`` live sessions it
created. Past the cap the oldest *unattested* session is evicted (a client
between /auth and /attest); attested sessions are never evicted, since each
one cost a verified attestation; when every slot holds one, /auth is refused
until one expires.

One nonce, one attestation: the first /attest that completes claims the
session with a create-only write (``kbs_protocol_attested``, atomic in every
store, Redis included), so concurrent /attest requests on one session, on one
replica or several, all end with that one token."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from .errors import AttestationError
from .storage import NS_SESSION, KvStore

__all__ = ["NS_ATTESTED", "Session", "SessionStore", "SessionsExhausted"]

#: the create-only claim an attestation makes on its session (value: the token)
NS_ATTESTED = "kbs_protocol_attested"


class SessionsExhausted(AttestationError):
    """Every session slot holds an attested session: /auth is refused until one expires."""

    variant = "AttestationError"


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
    def __init__(self, store: KvStore, *, timeout_min: int = 5, max_sessions: int = 10000) -> None:
        self._store = store
        self.timeout_s = timeout_min * 60
        self.max_sessions = max_sessions
        #: sessions this replica created, oldest first: id -> expiry
        self._pending: OrderedDict[str, float] = OrderedDict()
        self._attested: OrderedDict[str, float] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def live(self) -> int:
        """Live sessions this replica created (pending and attested)."""
        return len(self._pending) + len(self._attested)

    @staticmethod
    def _drop_expired(index: OrderedDict[str, float], now: float) -> None:
        while index:
            _, exp = next(iter(index.items()))
            if exp > now:
                return
            index.popitem(last=False)

    async def _make_room(self, now: float) -> None:
        self._drop_expired(self._pending, now)
        self._drop_expired(self._attested, now)
        while self.live >= self.max_sessions:
            if not self._pending:
                raise SessionsExhausted(
                    "Attestation error: RCAR handshake Auth failed: too many attested sessions"
                )
            sid, _ = self._pending.popitem(last=False)
            await self._store.delete(NS_SESSION, sid)

    async def create(self, tee: str, *, now: float | None = None, hash_algorithm: str = "sha384") -> Session:
        t = time.time() if now is None else now
        await self._make_room(t)
        s = Session(
            id=uuid.uuid4().hex,
            tee=tee,
            nonce=base64.b64encode(os.urandom(32)).decode(),
            expires_at=t + self.timeout_s,
            hash_algorithm=hash_algorithm,
        )
        await self._store.set(NS_SESSION, s.id, s.to_bytes(), ttl_s=self.timeout_s)
        self._pending[s.id] = s.expires_at
        return s

    @contextlib.asynccontextmanager
    async def lock(self, sid: str) -> AsyncIterator[None]:
        """Serialise /attest requests on one session within this replica."""
        lk, n = self._locks.get(sid, (asyncio.Lock(), 0))
        self._locks[sid] = (lk, n + 1)
        try:
            async with lk:
                yield
        finally:
            lk, n = self._locks[sid]
            if n <= 1:
                del self._locks[sid]
            else:
                self._locks[sid] = (lk, n - 1)

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
        """Bind ``token`` to the session, unless another attestation claimed it first: then the
        session carries that attestation's token, and ``token`` is dropped."""
        t = time.time() if now is None else now
        ttl = max(0.001, s.expires_at - t)
        if not await self._store.add(NS_ATTESTED, s.id, token.encode(), ttl_s=ttl):
            first = await self._store.get(NS_ATTESTED, s.id)
            if first is None:
                raise AttestationError("Attestation error: RCAR handshake Attest failed")
            return replace(s, token=first.decode())
        done = replace(s, token=token)
        await self._store.set(NS_SESSION, s.id, done.to_bytes(), ttl_s=ttl)
        if self._pending.pop(s.id, None) is not None:
            self._attested[s.id] = s.expires_at
        return done

    async def purge_expired(self) -> int:
        t = time.time()
        self._drop_expired(self._pending, t)
        self._drop_expired(self._attested, t)
        return await self._store.purge_expired()

    async def count(self) -> int:
        return len(await self._store.keys(NS_SESSION))
