"""A small TPM 2.0 command client: the commands an attester needs, marshalled
by hand (TCG TPM 2.0 Library Part 3), over ``/dev/tpmrm0`` (the kernel's
resource-managed device) or a swtpm socket (raw command stream, the same
bytes; tests and VMs without a kernel TPM driver).

Only password authorization (``TPM_RS_PW``) with an empty or given password
is used, which is what the Azure paravisor's NV indices, an owner hierarchy
without a password and PCR extends need. Responses are parsed with bounds
checks; a TPM error code becomes :class:`TpmCommandError` with the code.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Protocol

from attestation.tpm.errors import TpmCommandError, TpmUnavailable
from attestation.tpm.structures import (
    ALG_NULL,
    ALG_SHA256,
    PcrSelection,
    Public,
    encode_pcr_selection,
    parse_public,
)

__all__ = [
    "DEFAULT_DEVICE",
    "NV_AUTHREAD",
    "NV_AUTHWRITE",
    "NV_OWNERREAD",
    "NV_OWNERWRITE",
    "DeviceTransport",
    "NvPublic",
    "SocketTransport",
    "Tpm",
    "TpmTransport",
    "open_tpm",
]

DEFAULT_DEVICE = "/dev/tpmrm0"
_MAX_RESPONSE = 8192

_ST_NO_SESSIONS = 0x8001
_ST_SESSIONS = 0x8002
_RS_PW = 0x40000009
_RH_OWNER = 0x40000001
_RH_NULL = 0x40000007

_CC_NV_UNDEFINE = 0x0122
_CC_NV_DEFINE = 0x012A
_CC_NV_WRITE = 0x0137
_CC_NV_READ = 0x014E
_CC_QUOTE = 0x0158
_CC_NV_READ_PUBLIC = 0x0169
_CC_READ_PUBLIC = 0x0173
_CC_GET_CAPABILITY = 0x017A
_CC_PCR_READ = 0x017E
_CC_PCR_EXTEND = 0x0182

_RC_HANDLE_NOT_FOUND = (0x18B, 0x28B)  # TPM_RC_HANDLE for handle 1 / 2
_PT_NV_BUFFER_MAX = 0x100 + 44

# TPMA_NV bits
NV_OWNERWRITE = 1 << 1
NV_AUTHWRITE = 1 << 2
NV_OWNERREAD = 1 << 17
NV_AUTHREAD = 1 << 18


class TpmTransport(Protocol):
    def transact(self, command: bytes) -> bytes: ...

    def close(self) -> None: ...


class DeviceTransport:
    """``/dev/tpmrm0``: one write of the command, one read of the response."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TpmUnavailable(f"cannot open TPM device {path}: {exc.strerror}") from exc

    def transact(self, command: bytes) -> bytes:
        os.write(self._fd, command)
        return os.read(self._fd, _MAX_RESPONSE)

    def close(self) -> None:
        os.close(self._fd)


class SocketTransport:
    """A swtpm server socket (``unix:PATH`` or ``tcp:HOST:PORT``): raw TPM commands."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        try:
            if address.startswith("tcp:"):
                host, _, port = address[4:].rpartition(":")
                self._sock = socket.create_connection((host, int(port)), timeout=timeout)
            else:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(address.removeprefix("unix:"))
        except (OSError, ValueError) as exc:
            raise TpmUnavailable(f"cannot connect to the TPM socket {address}: {exc}") from exc

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise TpmCommandError("TPM socket closed mid-response")
            buf += chunk
        return buf

    def transact(self, command: bytes) -> bytes:
        self._sock.sendall(command)
        head = self._recv(10)
        size = struct.unpack(">I", head[2:6])[0]
        if not 10 <= size <= _MAX_RESPONSE:
            raise TpmCommandError(f"TPM response size {size} out of range")
        return head + self._recv(size - 10)

    def close(self) -> None:
        self._sock.close()


def open_tpm(where: str = DEFAULT_DEVICE) -> Tpm:
    """``where`` is a device path, ``unix:PATH`` or ``tcp:HOST:PORT`` (swtpm)."""
    if where.startswith(("unix:", "tcp:")):
        return Tpm(SocketTransport(where))
    return Tpm(DeviceTransport(where))


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _pw_auth(password: bytes = b"") -> bytes:
    area = struct.pack(">I", _RS_PW) + _tpm2b(b"") + b"\x00" + _tpm2b(password)
    return struct.pack(">I", len(area)) + area


class _Resp:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.d):
            raise TpmCommandError("TPM response truncated")
        out = self.d[self.i : self.i + n]
        self.i += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        v: int = struct.unpack(">H", self.take(2))[0]
        return v

    def u32(self) -> int:
        v: int = struct.unpack(">I", self.take(4))[0]
        return v

    def tpm2b(self) -> bytes:
        return self.take(self.u16())


@dataclass(frozen=True)
class NvPublic:
    index: int
    name_alg: int
    attributes: int
    size: int


class Tpm:
    """Commands over a transport. Not thread-safe across processes; calls are
    serialized within this object."""

    def __init__(self, transport: TpmTransport) -> None:
        self._t = transport
        self._lock = threading.Lock()
        self._nv_buffer: int | None = None

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(
        self, cc: int, handles: bytes, params: bytes, *, auth: bytes | None = None, out_handles: int = 0
    ) -> _Resp:
        tag = _ST_SESSIONS if auth is not None else _ST_NO_SESSIONS
        body = handles + (auth or b"") + params
        cmd = struct.pack(">HII", tag, 10 + len(body), cc) + body
        with self._lock:
            try:
                resp = self._t.transact(cmd)
            except OSError as exc:
                raise TpmCommandError(f"TPM I/O failed: {exc}") from exc
        if len(resp) < 10:
            raise TpmCommandError("TPM response shorter than its header")
        rtag, size, rc = struct.unpack(">HII", resp[:10])
        if size != len(resp):
            raise TpmCommandError("TPM response size does not match its header")
        if rc != 0:
            raise TpmCommandError(f"TPM command {cc:#x} failed with rc {rc:#x}", rc)
        r = _Resp(resp[10:])
        r.take(4 * out_handles)
        if rtag == _ST_SESSIONS:
            psize = r.u32()
            return _Resp(r.take(psize))
        return r

    # --- capabilities ----------------------------------------------------------

    def nv_buffer_max(self) -> int:
        if self._nv_buffer is None:
            r = self._command(_CC_GET_CAPABILITY, b"", struct.pack(">III", 6, _PT_NV_BUFFER_MAX, 1))
            r.u8()  # moreData
            if r.u32() != 6 or r.u32() != 1:
                raise TpmCommandError("unexpected TPM capability response")
            prop, value = r.u32(), r.u32()
            self._nv_buffer = value if prop == _PT_NV_BUFFER_MAX and 64 <= value <= 4096 else 512
        return self._nv_buffer

    # --- NV ----------------------------------------------------------------------

    def nv_read_public(self, index: int) -> NvPublic | None:
        try:
            r = self._command(_CC_NV_READ_PUBLIC, struct.pack(">I", index), b"")
        except TpmCommandError as exc:
            if exc.code in _RC_HANDLE_NOT_FOUND:
                return None
            raise
        pub = _Resp(r.tpm2b())
        got, alg, attrs = pub.u32(), pub.u16(), pub.u32()
        pub.tpm2b()
        size = pub.u16()
        if got != index:
            raise TpmCommandError("TPM returned the public area of another NV index")
        return NvPublic(index, alg, attrs, size)

    def nv_read(self, index: int, *, owner_auth: bool = True, limit: int = 64 * 1024) -> bytes:
        """All bytes of NV ``index`` (authorized by the owner hierarchy, as the
        Azure paravisor's indices expect, or by the index itself)."""
        pub = self.nv_read_public(index)
        if pub is None:
            raise TpmCommandError(f"NV index {index:#x} is not defined")
        if pub.size > limit:
            raise TpmCommandError(f"NV index {index:#x} holds {pub.size} bytes, more than {limit}")
        chunk = self.nv_buffer_max()
        auth_handle = _RH_OWNER if owner_auth else index
        out = b""
        while len(out) < pub.size:
            n = min(chunk, pub.size - len(out))
            r = self._command(
                _CC_NV_READ,
                struct.pack(">II", auth_handle, index),
                struct.pack(">HH", n, len(out)),
                auth=_pw_auth(),
            )
            data = r.tpm2b()
            if len(data) != n:
                raise TpmCommandError("TPM returned a short NV read")
            out += data
        return out

    def nv_define(self, index: int, size: int, attributes: int = NV_OWNERWRITE | NV_OWNERREAD) -> None:
        public = struct.pack(">IHI", index, ALG_SHA256, attributes) + _tpm2b(b"") + struct.pack(">H", size)
        self._command(
            _CC_NV_DEFINE, struct.pack(">I", _RH_OWNER), _tpm2b(b"") + _tpm2b(public), auth=_pw_auth()
        )

    def nv_undefine(self, index: int) -> None:
        self._command(_CC_NV_UNDEFINE, struct.pack(">II", _RH_OWNER, index), b"", auth=_pw_auth())

    def nv_write(self, index: int, data: bytes) -> None:
        chunk = self.nv_buffer_max()
        for off in range(0, len(data), chunk):
            self._command(
                _CC_NV_WRITE,
                struct.pack(">II", _RH_OWNER, index),
                _tpm2b(data[off : off + chunk]) + struct.pack(">H", off),
                auth=_pw_auth(),
            )

    def nv_write_sized(self, index: int, data: bytes) -> None:
        """Write ``data`` to an owner-authorized index sized exactly for it
        (defining or redefining the index as needed, like the Azure tooling)."""
        pub = self.nv_read_public(index)
        if pub is not None and pub.size != len(data):
            self.nv_undefine(index)
            pub = None
        if pub is None:
            self.nv_define(index, len(data))
        self.nv_write(index, data)

    # --- keys, quotes, PCRs --------------------------------------------------------

    def read_public(self, handle: int) -> Public:
        r = self._command(_CC_READ_PUBLIC, struct.pack(">I", handle), b"")
        return parse_public(r.tpm2b())

    def quote(
        self, ak_handle: int, nonce: bytes, pcrs: PcrSelection, scheme: tuple[int, int] | None = None
    ) -> tuple[bytes, bytes]:
        """``(TPMS_ATTEST bytes, TPMT_SIGNATURE bytes)`` over ``pcrs``; ``scheme``
        is ``(sig_alg, hash_alg)`` or ``None`` for the AK's own scheme."""
        if len(nonce) > 64:
            raise TpmCommandError("TPM quote nonce longer than 64 bytes")
        in_scheme = struct.pack(">H", ALG_NULL) if scheme is None else struct.pack(">HH", *scheme)
        r = self._command(
            _CC_QUOTE,
            struct.pack(">I", ak_handle),
            _tpm2b(nonce) + in_scheme + encode_pcr_selection((pcrs,)),
            auth=_pw_auth(),
        )
        attest = r.tpm2b()
        signature = r.d[r.i :]
        return attest, signature

    def pcr_read(self, alg: int, indices: tuple[int, ...]) -> dict[int, bytes]:
        """PCR values (TPMs return at most 8 per call; this loops)."""
        out: dict[int, bytes] = {}
        remaining = [i for i in indices]
        while remaining:
            sel = encode_pcr_selection((PcrSelection(alg, tuple(remaining)),))
            r = self._command(_CC_PCR_READ, b"", sel)
            r.u32()  # update counter
            count = r.u32()
            got: list[int] = []
            for _ in range(count):
                r.u16()
                bitmap = r.take(r.u8())
                got += [i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (1 << (i % 8))]
            n = r.u32()
            if n == 0 or n != len(got):
                raise TpmCommandError("TPM PCR_Read returned no or inconsistent values")
            for i in got:
                out[i] = r.tpm2b()
            remaining = [i for i in remaining if i not in out]
        return out

    def pcr_extend(self, index: int, digest: bytes, alg: int = ALG_SHA256) -> None:
        if not 0 <= index < 24:
            raise TpmCommandError(f"PCR index {index} out of range")
        self._command(
            _CC_PCR_EXTEND,
            struct.pack(">I", index),
            struct.pack(">IH", 1, alg) + digest,
            auth=_pw_auth(),
        )
