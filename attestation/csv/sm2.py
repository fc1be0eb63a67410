"""SM2 signature verification (GB/T 32918.2) over the SM2 curve, with the
signer's user ID folded into ``Z_A`` (GB/T 32918.2 §5.5), and SM3 from
``cryptography``. Verification only handles public values: plain integer
arithmetic is fine (no secret-dependent timing). :func:`sign` exists for tests.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes

__all__ = ["GX", "GY", "N", "public_key", "sign", "sm3", "verify"]

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

_Point = tuple[int, int] | None


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _add(p: _Point, q: _Point) -> _Point:
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0] and (p[1] + q[1]) % P == 0:
        return None
    if p == q:
        lam = (3 * p[0] * p[0] + A) * pow(2 * p[1], -1, P) % P
    else:
        lam = (q[1] - p[1]) * pow(q[0] - p[0], -1, P) % P
    x = (lam * lam - p[0] - q[0]) % P
    return x, (lam * (p[0] - x) - p[1]) % P


def _mul(k: int, p: _Point) -> _Point:
    r: _Point = None
    while k:
        if k & 1:
            r = _add(r, p)
        p = _add(p, p)
        k >>= 1
    return r


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def _za(uid: bytes, x: int, y: int) -> bytes:
    entl = (len(uid) * 8).to_bytes(2, "big")
    return sm3(entl + uid + b"".join(v.to_bytes(32, "big") for v in (A, B, GX, GY, x, y)))


def verify(x: int, y: int, uid: bytes, message: bytes, r: int, s: int) -> bool:
    """True iff ``(r, s)`` is a valid SM2 signature of ``message`` by the key ``(x, y)``."""
    if len(uid) > 8191 or not _on_curve(x, y) or not (0 < r < N and 0 < s < N):
        return False
    t = (r + s) % N
    if t == 0:
        return False
    e = int.from_bytes(sm3(_za(uid, x, y) + message), "big")
    pt = _add(_mul(s, (GX, GY)), _mul(t, (x, y)))
    return pt is not None and (e + pt[0]) % N == r


def public_key(d: int) -> tuple[int, int]:
    pt = _mul(d, (GX, GY))
    assert pt is not None
    return pt


def sign(d: int, uid: bytes, message: bytes) -> tuple[int, int]:
    """TEST USE: an SM2 signature (not constant-time)."""
    x, y = public_key(d)
    e = int.from_bytes(sm3(_za(uid, x, y) + message), "big")
    while True:
        k = secrets.randbelow(N - 1) + 1
        pt = _mul(k, (GX, GY))
        assert pt is not None
        r = (e + pt[0]) % N
        if r == 0 or r + k == N:
            continue
        s = pow(1 + d, -1, N) * (k - r * d) % N
        if s:
            return r, s
