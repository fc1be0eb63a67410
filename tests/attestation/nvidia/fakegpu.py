"""A fake NVML layer for tests (no GPU exists on CI machines).

Two kinds of fake device:

* :func:`recorded_device` serves a recorded NVIDIA report and chain byte for
  byte, whatever nonce is asked for (a real device would sign the asked
  nonce; callers use the recorded nonce to get verifiable evidence);
* :class:`TestGpu` re-signs a recorded report for any nonce with a test key
  whose chain ends in a test root (not NVIDIA's), with the report's FWID in
  the leaf's DICE extension, so a full handshake with fresh nonces can be
  verified against that test root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from attestation.errors import UnsupportedPlatform
from attestation.nvidia.device import ConfComputeState
from attestation.nvidia.errors import NvmlCallError
from attestation.nvidia.spdm import REQUEST_SIZE, AttestationReport

ARCH_HOPPER = 9
ARCH_BLACKWELL = 10
ARCH_AMPERE = 7


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + content


def hopper_tcb_info(fwid: bytes) -> bytes:
    """NVIDIA's Hopper TcbInfo layout: SEQUENCE { INTEGER 1, SEQUENCE { sha384 OID, OCTET STRING fwid } }."""
    sha384_oid = bytes.fromhex("0609608648016503040202")
    return _der(0x30, _der(0x02, b"\x01") + _der(0x30, sha384_oid + _der(0x04, fwid)))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after or dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for e in extra or []:
        b = b.add_extension(e, critical=False)
    return b.sign(issuer_key, hashes.SHA384())


class TestGpu:
    """A Hopper GPU with a test identity that signs any nonce."""

    __test__ = False  # not a pytest class

    def __init__(self, template_report: bytes, *, not_after: dt.datetime | None = None) -> None:
        self.template = AttestationReport.from_bytes(template_report)
        self._raw = bytes(template_report[: REQUEST_SIZE + self.template.response.signed_length])
        fwid = self.template.opaque.fwid
        self.root_key = root_key = ec.generate_private_key(ec.SECP384R1())
        self.ica_key = ica_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.root = _cert("Test Device Identity CA", root_key, "Test Device Identity CA", root_key, ca=True)
        ica = _cert("Test GH100 Identity", ica_key, "Test Device Identity CA", root_key, ca=True)
        extra: list[x509.ExtensionType] = []
        if fwid is not None:
            extra.append(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), hopper_tcb_info(fwid))
            )
        leaf = _cert(
            "GH100 A01 GSP FMC LF",
            self.leaf_key,
            "Test GH100 Identity",
            ica_key,
            ca=False,
            extra=extra,
            not_after=not_after,
        )
        self.chain = (leaf, ica, self.root)
        self.chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)

    def report(self, nonce: bytes) -> bytes:
        assert len(nonce) == 32
        signed = self._raw[:4] + nonce + self._raw[36:]
        der = self.leaf_key.sign(signed, ec.ECDSA(hashes.SHA384()))
        r, s = utils.decode_dss_signature(der)
        return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclass
class FakeDevice:
    arch: int
    uuid: str
    report: Callable[[bytes], bytes]
    chain_pem: bytes


def recorded_device(
    report: bytes, chain_pem: bytes, *, uuid: str = "GPU-recorded", arch: int = ARCH_HOPPER
) -> FakeDevice:
    return FakeDevice(arch, uuid, lambda _nonce: report, chain_pem)


@dataclass
class FakeNvml:
    """An in-memory NvmlBackend. Records every call."""

    devices: list[FakeDevice] = field(default_factory=list)
    cc_on: bool = True
    cc_supported: bool = True
    library_present: bool = True
    dev_tools: bool = False
    ready: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)
    initialised: bool = False

    def init(self) -> None:
        self.calls.append(("init", None))
        if not self.library_present:
            raise UnsupportedPlatform("no device: NVML shared library not found")
        self.initialised = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))
        self.initialised = False

    def device_count(self) -> int:
        assert self.initialised
        return len(self.devices)

    def cc_state(self) -> ConfComputeState:
        if not self.cc_supported:
            raise NvmlCallError("NVML confidential-compute state failed: Not Supported")
        return ConfComputeState(
            environment=2 if self.cc_on else 0, cc_feature=self.cc_on, dev_tools_mode=self.dev_tools
        )

    def device_arch(self, index: int) -> int:
        return self.devices[index].arch

    def device_uuid(self, index: int) -> str:
        return self.devices[index].uuid

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        self.calls.append(("report", nonce))
        return self.devices[index].report(nonce)

    def attestation_cert_chain(self, index: int) -> bytes:
        return self.devices[index].chain_pem

    def driver_version(self) -> str:
        return "550.90.07"

    def gpus_ready_state(self) -> bool:
        return self.ready

    def set_gpus_ready_state(self, ready: bool) -> None:
        self.calls.append(("set_ready", ready))
        self.ready = ready
