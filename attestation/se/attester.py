"""The ``se`` attester (IBM Secure Execution guest), as guest-components'.

The KBS's ``/auth`` nonce is a JSON ``SeAttestationRequest``; the RCAR client
adds ``runtime_data_digest`` (the session's report data) and hands the JSON
to :meth:`SeAttester.get_evidence`. The attester asks the Ultravisor, through
``/dev/uv`` (``UVIO_IOCTL_ATT``), to answer the request's ARCB with that
digest as user data, and returns the ``SeAttestationResponse``.

The ioctl structures follow the kernel's ``asm/uvdevice.h``. There is no
s390x hardware here: the layout is checked against the header's offsets and
the flow against a software Ultravisor (tests); it has not run on an SE guest.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from attestation.se.errors import SeDeviceError, SeFormatError, SeUnavailable
from coco_common.b64 import b64_decode, b64_encode
from coco_common.strict_json import strict_object

__all__ = [
    "UVIO_IOCTL_ATT",
    "LinuxUvDevice",
    "SeAttester",
    "UvAttestationDevice",
    "UvioAttest",
    "UvioIoctlCb",
    "se_guest_detected",
]

UVIO_IOCTL_ATT = 0xC0407501  # _IOWR('u', 1, struct uvio_ioctl_cb)
_UVC_RC_EXECUTED = 0x0001
_USER_DATA_LEN = 0x100
_MAX_ARCB = 0x100000
_MAX_OUT = 0x8000
_REPORT_DATA_SIZE = 64
PROT_VIRT_GUEST = Path("/sys/firmware/uv/prot_virt_guest")


class UvioIoctlCb(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("uv_rc", ctypes.c_uint16),
        ("uv_rrc", ctypes.c_uint16),
        ("argument_addr", ctypes.c_uint64),
        ("argument_len", ctypes.c_uint32),
        ("reserved14", ctypes.c_uint8 * (0x40 - 0x14)),
    ]


class UvioAttest(ctypes.Structure):
    _fields_ = [
        ("arcb_addr", ctypes.c_uint64),
        ("meas_addr", ctypes.c_uint64),
        ("add_data_addr", ctypes.c_uint64),
        ("user_data", ctypes.c_uint8 * _USER_DATA_LEN),
        ("config_uid", ctypes.c_uint8 * 16),
        ("arcb_len", ctypes.c_uint32),
        ("meas_len", ctypes.c_uint32),
        ("add_data_len", ctypes.c_uint32),
        ("user_data_len", ctypes.c_uint16),
        ("reserved136", ctypes.c_uint16),
    ]


class UvAttestationDevice(Protocol):
    def attest(
        self, arcb: bytes, user_data: bytes, measurement_size: int, additional_size: int
    ) -> tuple[bytes, bytes, bytes]:
        """(measurement, additional data, configuration UID)."""
        ...


def se_guest_detected(path: Path = PROT_VIRT_GUEST) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


class LinuxUvDevice:
    """``/dev/uv`` ``UVIO_IOCTL_ATT``."""

    def __init__(self, path: str = "/dev/uv") -> None:
        self.path = path

    def attest(
        self, arcb: bytes, user_data: bytes, measurement_size: int, additional_size: int
    ) -> tuple[bytes, bytes, bytes]:
        if len(arcb) > _MAX_ARCB or measurement_size > _MAX_OUT or additional_size > _MAX_OUT:
            raise SeDeviceError("SE attestation request sizes exceed the uvdevice limits")
        if len(user_data) > _USER_DATA_LEN:
            raise SeDeviceError("SE user data is at most 256 bytes")
        arcb_buf = ctypes.create_string_buffer(arcb, len(arcb))
        meas_buf = ctypes.create_string_buffer(measurement_size)
        add_buf = ctypes.create_string_buffer(max(additional_size, 1))
        att = UvioAttest()
        att.arcb_addr = ctypes.addressof(arcb_buf)
        att.arcb_len = len(arcb)
        att.meas_addr = ctypes.addressof(meas_buf)
        att.meas_len = measurement_size
        att.add_data_addr = ctypes.addressof(add_buf) if additional_size else 0
        att.add_data_len = additional_size
        ctypes.memmove(att.user_data, user_data, len(user_data))
        att.user_data_len = len(user_data)
        cb = UvioIoctlCb()
        cb.argument_addr = ctypes.addressof(att)
        cb.argument_len = ctypes.sizeof(att)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SeUnavailable(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            fcntl.ioctl(fd, UVIO_IOCTL_ATT, cb)
        except OSError as exc:
            raise SeDeviceError(f"UVIO_IOCTL_ATT failed: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if cb.uv_rc != _UVC_RC_EXECUTED:
            raise SeDeviceError(
                f"the Ultravisor refused the attestation request (rc {cb.uv_rc:#x}, rrc {cb.uv_rrc:#x})"
            )
        return meas_buf.raw[: att.meas_len], add_buf.raw[: att.add_data_len], bytes(att.config_uid)


def _b64(doc: Mapping[str, Any], key: str, limit: int) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str) or len(v) > limit * 4 // 3 + 4:
        raise SeFormatError(f"SE attestation request: {key} must be base64")
    try:
        return b64_decode(v)
    except ValueError as exc:
        raise SeFormatError(f"SE attestation request: {key} is not base64") from exc


class SeAttester:
    tee = "se"

    def __init__(self, device: UvAttestationDevice | None = None) -> None:
        self.device = device if device is not None else LinuxUvDevice()

    def _evidence(self, request_json: bytes) -> dict[str, Any]:
        req = strict_object(request_json, error=SeFormatError, what="the SE challenge (SeAttestationRequest)")
        digest = _b64(req, "runtime_data_digest", _REPORT_DATA_SIZE)
        if len(digest) > _REPORT_DATA_SIZE:
            raise SeDeviceError("runtime_data_digest is longer than 64 bytes")
        user_data = digest.ljust(_REPORT_DATA_SIZE, b"\x00")
        meas_size, add_size = req.get("measurement_size"), req.get("additional_size")
        if (
            type(meas_size) is not int
            or type(add_size) is not int
            or not (0 < meas_size <= _MAX_OUT and 0 <= add_size <= _MAX_OUT)
        ):
            raise SeDeviceError("SE attestation request sizes are invalid")
        measurement, additional, cuid = self.device.attest(
            _b64(req, "request_blob", _MAX_ARCB), user_data, meas_size, add_size
        )
        return {
            "measurement": b64_encode(measurement),
            "additional_data": b64_encode(additional),
            "user_data": b64_encode(user_data),
            "cuid": b64_encode(cuid),
            "encr_measurement_key": req.get("encr_measurement_key"),
            "encr_request_nonce": req.get("encr_request_nonce"),
            "image_hdr_tags": req.get("image_hdr_tags"),
        }

    async def get_evidence(self, report_data: bytes) -> Any:
        """``report_data``: the challenge JSON with ``runtime_data_digest`` set."""
        return await asyncio.to_thread(self._evidence, report_data)

    async def bind_init_data(self, digest: bytes) -> None:
        raise SeUnavailable("IBM SE has no init-data binding (trustee ignores it too)")
