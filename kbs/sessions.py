"""RCAR sessions (namespace ``kbs_protocol_session``): created by /auth, made
attested by /attest, never extended, gone after ``timeout`` minutes.

Stored as trustee v0.21 stores them (``SessionStatus``, serde's external
tagging): ``{"Authed":{"request":{...},"challenge":{"nonce","extra-params"},
"id","timeout":<RFC 3339>}}`` then ``{"Attested":{"token","id","timeout"}}``,
so replicas of this KBS and trustee's can share one session store.

Bounded: each replica holds at most ``max_sessions`` live sessions it
created. Past the cap the oldest *unattested* session is evicted (a client
between /auth and /attest); attested sessions are never evicted, since each
one cost a verified attestation; when every slot holds one, /auth is refused
until one expires. Expired sessions this replica created are removed from its
own index, without reading any record; the whole namespace is scanned only
every ``FULL_SCAN_EVERY`` sweeps (for records other processes left behind).

One nonce, one attestation: the first /attest that completes claims the
session with a create-only write (namespace ``kbs_protocol_attested``, atomic
in every store, Redis and PostgreSQL included), so concurrent /attest requests
on one session, on one replica or several, all end with that one token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from coco_common.b64 import b64_encode
from coco_common.strict_json import strict_loads

from .errors import KbsAttestationError, StorageError
from .storage import NS_SESSION, KvStore

__all__ = [
    "MAX_RECORD_BYTES",
    "NS_ATTESTED",
    "Session",
    "SessionRecordError",
    "SessionStore",
    "SessionsExhausted",
]

#: the create-only claim an attestation makes on its session (value: expiry, newline, token)
NS_ATTESTED = "kbs_protocol_attested"
#: the largest stored session record parsed (an attested one carries its token: 128 KiB by default)
MAX_RECORD_BYTES = 1024 * 1024
#: parsed records remembered by their bytes (/attest reads its session twice), up to this size each
_PARSED_MAX = 512
_PARSED_MAX_BYTES = 8 * 1024


class SessionRecordError(StorageError):
    """A stored session record that is not one: oversized, not strict JSON (duplicate
    members, NaN), or not trustee's ``SessionStatus`` shape."""


class SessionsExhausted(KbsAttestationError):
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
    def from_bytes(cls, untrusted: bytes, *, limit: int = MAX_RECORD_BYTES) -> Session:
        """Parse a stored session (trustee's form), at most ``limit`` bytes of strict JSON;
        anything else raises :class:`SessionRecordError`. The store is shared with other
        replicas (and trustee's), so its records are input like any other."""
        d = strict_loads(untrusted, limit=limit, error=SessionRecordError, what="session record")
        try:
            return cls._from_doc(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionRecordError(f"session record: {type(exc).__name__}: {str(exc)[:80]}") from exc

    @classmethod
    def _from_doc(cls, d: Any) -> Session:
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
        if not isinstance(req, dict) or not isinstance(ch, dict):
            raise TypeError("request / challenge")
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
    m = _RFC3339.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError("session timeout is not RFC 3339")
    day, hms, frac, tz = m.groups()
    dt = datetime.fromisoformat(f"{day}T{hms}{'+00:00' if tz in ('Z', 'z') else tz}")
    return dt.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def _valid_id(sid: str) -> bool:
    return _SESSION_ID.fullmatch(sid) is not None


class SessionStore:
    #: sweeps between full scans of the session namespace (60 s sweeps: hourly)
    FULL_SCAN_EVERY = 60

    def __init__(
        self,
        store: KvStore,
        *,
        timeout_min: int = 5,
        max_sessions: int = 10000,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._store = store
        self.timeout_s = timeout_min * 60
        self.max_sessions = max_sessions
        self.max_record_bytes = max_record_bytes
        #: record bytes -> the Session they parse to (the same bytes always give the same one)
        self._parsed: OrderedDict[bytes, Session] = OrderedDict()
        #: sessions this replica created, oldest first: id -> expiry
        self._pending: OrderedDict[str, float] = OrderedDict()
        self._attested: OrderedDict[str, float] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._sweeps = 0

    @property
    def live(self) -> int:
        """Live sessions this replica created (pending and attested)."""
        return len(self._pending) + len(self._attested)

    @staticmethod
    def _pop_expired(index: OrderedDict[str, float], now: float) -> list[str]:
        gone: list[str] = []
        while index:
            sid, exp = next(iter(index.items()))
            if exp > now:
                break
            index.popitem(last=False)
            gone.append(sid)
        return gone

    async def _forget(self, sids: list[str]) -> int:
        """Delete sessions (and their claims) from a store that does not expire them itself."""
        if self._store.native_ttl:
            return 0
        n = 0
        for sid in sids:
            n += int(await self._store.delete(NS_SESSION, sid))
            await self._store.delete(NS_ATTESTED, sid)
        return n

    async def _make_room(self, now: float) -> None:
        await self._forget(self._pop_expired(self._pending, now) + self._pop_expired(self._attested, now))
        while self.live >= self.max_sessions:
            if not self._pending:
                raise SessionsExhausted(
                    "Attestation error: RCAR handshake Auth failed: too many attested sessions"
                )
            sid, _ = self._pending.popitem(last=False)
            await self._store.delete(NS_SESSION, sid)

    async def create(
        self, tee: str, *, now: float | None = None, hash_algorithm: str = "sha384", nonce: str | None = None
    ) -> Session:
        t = time.time() if now is None else now
        await self._make_room(t)
        s = Session(
            id=uuid.uuid4().hex,
            tee=tee,
            nonce=nonce if nonce is not None else b64_encode(os.urandom(32)),
            expires_at=t + self.timeout_s,
            hash_algorithm=hash_algorithm,
        )
        await self._store.set(NS_SESSION, s.id, s.to_bytes(), ttl_s=self._ttl(self.timeout_s))
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
            s = self._parse(raw)
        except SessionRecordError:
            return None
        if s.expires_at <= (time.time() if now is None else now):
            await self._store.delete(NS_SESSION, s.id)
            return None
        return s

    def _parse(self, raw: bytes) -> Session:
        s = self._parsed.get(raw)
        if s is not None:
            self._parsed.move_to_end(raw)
            return s
        s = Session.from_bytes(raw, limit=self.max_record_bytes)
        if len(raw) > _PARSED_MAX_BYTES:
            return s
        self._parsed[raw] = s
        while len(self._parsed) > _PARSED_MAX:
            self._parsed.popitem(last=False)
        return s

    async def mark_attested(self, s: Session, token: str, *, now: float | None = None) -> Session:
        """Bind ``token`` to the session, unless another attestation claimed it first: then the
        session carries that attestation's token, and ``token`` is dropped."""
        t = time.time() if now is None else now
        ttl = max(0.001, s.expires_at - t)
        claim = f"{s.expires_at!r}\n{token}".encode()
        if not await self._store.add(NS_ATTESTED, s.id, claim, ttl_s=self._ttl(ttl)):
            first = await self._store.get(NS_ATTESTED, s.id)
            if first is None or b"\n" not in first:
                raise KbsAttestationError("Attestation error: RCAR handshake Attest failed")
            return replace(s, token=first.split(b"\n", 1)[1].decode())
        done = replace(s, token=token)
        await self._store.set(NS_SESSION, s.id, done.to_bytes(), ttl_s=self._ttl(ttl))
        if self._pending.pop(s.id, None) is not None:
            self._attested[s.id] = s.expires_at
        return done

    def _ttl(self, ttl_s: float) -> float | None:
        # stores that expire values themselves get the TTL; on the others the record is written
        # exactly as trustee writes it (its own timeout inside) and purge_expired removes it
        return ttl_s if self._store.native_ttl else None

    async def purge_expired(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Remove expired sessions: this replica's from its index (no record is read); every
        ``FULL_SCAN_EVERY``-th call also scans the namespaces for records left by others."""
        n = await self._store.purge_expired()
        t = time.time() if now is None else now
        n += await self._forget(self._pop_expired(self._pending, t) + self._pop_expired(self._attested, t))
        if self._store.native_ttl:
            return n
        self._sweeps += 1
        if self._sweeps % self.FULL_SCAN_EVERY != 1:
            return n
        for sid in (await self._store.keys(NS_SESSION))[:limit]:
            raw = await self._store.get(NS_SESSION, sid)
            if raw is None:
                continue
            try:
                expired = Session.from_bytes(raw, limit=self.max_record_bytes).expires_at <= t
            except SessionRecordError:
                continue  # not ours to judge (trustee skips records it cannot parse, too)
            if expired and await self._store.delete(NS_SESSION, sid):
                await self._store.delete(NS_ATTESTED, sid)
                n += 1
        for sid in (await self._store.keys(NS_ATTESTED))[:limit]:
            raw = await self._store.get(NS_ATTESTED, sid)
            try:
                exp = float(raw.split(b"\n", 1)[0]) if raw else 0.0
            except ValueError:
                exp = 0.0
            if exp <= t:
                await self._store.delete(NS_ATTESTED, sid)
        return n

    async def count(self) -> int:
        return len(await self._store.keys(NS_SESSION))
