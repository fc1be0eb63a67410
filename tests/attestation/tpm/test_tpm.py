"""The ``tpm`` TEE: trustee's recorded evidence, and the attester against a
real software TPM (swtpm, provisioned with tpm2-tools) verified end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from attestation.errors import EvidenceFormatError
from attestation.eventlog.errors import EventLogFormatError
from attestation.tpm.attester import TpmAttester
from attestation.tpm.device import open_tpm
from attestation.tpm.errors import (
    QuoteSignatureInvalid,
    TpmCommandError,
    TpmFormatError,
    TpmVerificationError,
)
from attestation.tpm.kbs import TpmVerifier
from attestation.tpm.quote import init_data_pcr_value
from attestation.tpm.structures import parse_attest, parse_public, parse_signature
from attestation.verifier import EvidenceVerifier

from .swtpm import Swtpm, running_swtpm

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "evidence" / "tpm" / "tpm_evidence.json"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
AK = 0x81010002


def _recorded() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_bytes())
    return doc


def _recorded_rd() -> bytes:
    # the recorded quote's nonce: a 48-byte report-data digest padded to 64 bytes
    return parse_attest(base64.b64decode(_recorded()["tpm_quote"]["message"])).extra_data[:48]


def _verify(doc: Any, rd: bytes, init: bytes | None = None, **kw: Any) -> dict[str, Any]:
    return TpmVerifier(**kw).verify(doc, expected_report_data=rd, expected_init_data_hash=init, now=NOW)


def test_contract() -> None:
    assert isinstance(TpmVerifier(), EvidenceVerifier) and TpmVerifier().tee == "tpm"


def test_recorded_trustee_evidence_verifies() -> None:
    claims = _verify(_recorded(), _recorded_rd())
    assert claims["report_data"] == _recorded_rd().hex() + "00" * 16
    assert claims["pcr17"] == "ff" * 32 and claims["pcr08"] == "00" * 32
    assert claims["init_data"] == claims["pcr08"]
    assert claims["ak_public"] == _recorded()["ak_public"]
    assert claims["ak_trust"] == "policy"  # nothing configured: trustee's model (policy checks ak_public)
    with pytest.raises(TpmVerificationError, match="nonce"):
        _verify(_recorded(), bytes(48))


def _flip_b64(doc: dict[str, Any], key: str, offset: int) -> None:
    b = bytearray(base64.b64decode(doc["tpm_quote"][key]))
    b[offset] ^= 1
    doc["tpm_quote"][key] = base64.b64encode(bytes(b)).decode()


@pytest.mark.parametrize(
    ("key", "offset", "error"),
    [
        ("signature", 10, QuoteSignatureInvalid),  # inside the RSA signature value
        ("signature", -1, QuoteSignatureInvalid),
        ("message", 20, QuoteSignatureInvalid),  # qualifiedSigner
        ("message", 60, QuoteSignatureInvalid),  # extraData (nonce)
        ("message", -3, QuoteSignatureInvalid),  # pcrDigest
        ("signature", 0, TpmFormatError),  # sigAlg
    ],
)
def test_recorded_byte_flips(key: str, offset: int, error: type[Exception]) -> None:
    doc = _recorded()
    _flip_b64(doc, key, offset)
    with pytest.raises(error):
        _verify(doc, _recorded_rd())


def test_recorded_pcr_value_flip() -> None:
    doc = _recorded()
    doc["tpm_quote"]["pcrs"][8] = "01" + doc["tpm_quote"]["pcrs"][8][2:]
    with pytest.raises(TpmVerificationError, match="digest"):
        _verify(doc, _recorded_rd())


def test_another_ak_is_refused() -> None:
    doc = _recorded()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    doc["ak_public"] = base64.b64encode(
        other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    with pytest.raises(QuoteSignatureInvalid):
        _verify(doc, _recorded_rd())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(unknown=1),
        lambda d: d.pop("ak_public"),
        lambda d: d.update(ak_public="not base64!"),
        lambda d: d.update(ak_public=base64.b64encode(b"junk").decode()),
        lambda d: d["tpm_quote"].update(pcrs=["00"] * 24),
        lambda d: d["tpm_quote"].update(pcrs=["00" * 32] * 25),
        lambda d: d["tpm_quote"].update(message=base64.b64encode(b"\xff\x54\x43\x47").decode()),
    ],
)
def test_malformed(mutate: Any) -> None:
    doc = _recorded()
    mutate(doc)
    with pytest.raises(EvidenceFormatError):
        _verify(doc, _recorded_rd())


def test_structures_reject_trailing_and_truncated() -> None:
    msg = base64.b64decode(_recorded()["tpm_quote"]["message"])
    with pytest.raises(TpmFormatError):
        parse_attest(msg + b"\x00")
    with pytest.raises(TpmFormatError):
        parse_attest(msg[:-1])
    sig = base64.b64decode(_recorded()["tpm_quote"]["signature"])
    assert parse_signature(sig).hash_alg == 0x000B
    with pytest.raises(TpmFormatError):
        parse_signature(sig + b"\x00")


# --- against a real software TPM ---------------------------------------------------


@pytest.fixture(scope="module")
def tpm() -> Iterator[Swtpm]:
    with running_swtpm() as t:
        t.persist_ak(AK)
        yield t


def _evidence(t: Swtpm, rd: bytes, **kw: Any) -> dict[str, Any]:
    att = TpmAttester(t.address, ak_handle=AK, event_log=kw.pop("event_log", None))
    doc: dict[str, Any] = asyncio.run(att.get_evidence(rd))
    return doc


def test_swtpm_quote_verifies_end_to_end(tpm: Swtpm) -> None:
    rd = hashlib.sha384(b"runtime data").digest()
    doc = _evidence(tpm, rd)
    claims = _verify(doc, rd)
    assert claims["report_data"] == rd[:32].hex()  # nonce: report data truncated to 32 bytes
    # PCR values as an independent TSS (tpm2-tools) reads them
    assert claims["pcr16"] == tpm.pcr(16).hex()
    # the AK is the key tpm2-tools made persistent (its TPMT_PUBLIC, parsed here)
    tpm.tools("tpm2_readpublic", "-c", f"{AK:#x}", "-f", "tpmt", "-o", "ak.tpmt")
    pub = parse_public((tpm.dir / "ak.tpmt").read_bytes())
    spki = pub.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(doc["ak_public"]) == spki
    with pytest.raises(TpmVerificationError, match="nonce"):
        _verify(doc, hashlib.sha384(b"other").digest())


def test_swtpm_init_data_binding_pcr8(tpm: Swtpm) -> None:
    digest = hashlib.sha256(b"init-data toml").digest()
    att = TpmAttester(tpm.address, ak_handle=AK, event_log=None)
    asyncio.run(att.bind_init_data(digest))
    assert tpm.pcr(8) == init_data_pcr_value(digest)
    rd = b"\x01" * 48
    doc = asyncio.run(att.get_evidence(rd))
    assert _verify(doc, rd, init=digest)["init_data"] == init_data_pcr_value(digest).hex()
    with pytest.raises(TpmVerificationError, match="PCR"):
        _verify(doc, rd, init=hashlib.sha256(b"other").digest())
    with pytest.raises(TpmCommandError):
        asyncio.run(att.bind_init_data(bytes(48)))


def test_swtpm_configured_ak(tpm: Swtpm) -> None:
    rd = b"\x02" * 32
    doc = _evidence(tpm, rd)
    spki = base64.b64decode(doc["ak_public"])
    pem = serialization.load_der_public_key(spki).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert _verify(doc, rd, trusted_ak_keys=[pem.decode()])["ak_trust"] == "configured"
    other = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(TpmVerificationError, match="neither configured nor certified"):
        _verify(doc, rd, trusted_ak_keys=[other.decode()])


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test AK CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _ak_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, spki: bytes) -> bytes:
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AK")]))
        .issuer_name(ca.subject)
        .public_key(serialization.load_der_public_key(spki))  # type: ignore[arg-type]
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=10))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_swtpm_ak_certificate(tpm: Swtpm) -> None:
    rd = b"\x03" * 32
    doc = _evidence(tpm, rd)
    spki = base64.b64decode(doc["ak_public"])
    ca, ca_key = _ca()
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    doc["ak_certificate"] = base64.b64encode(_ak_cert(ca, ca_key, spki)).decode()
    assert _verify(doc, rd, ak_ca_pem=ca_pem)["ak_trust"] == "certificate"
    # a certificate from another CA
    other_ca, other_key = _ca()
    doc["ak_certificate"] = base64.b64encode(_ak_cert(other_ca, other_key, spki)).decode()
    with pytest.raises(TpmVerificationError, match="chain"):
        _verify(doc, rd, ak_ca_pem=ca_pem)
    # a certificate for another key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    other_spki = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    doc["ak_certificate"] = base64.b64encode(_ak_cert(ca, ca_key, other_spki)).decode()
    with pytest.raises(TpmVerificationError, match="another key"):
        _verify(doc, rd, ak_ca_pem=ca_pem)
    # CA configured, no certificate
    doc.pop("ak_certificate")
    with pytest.raises(TpmVerificationError):
        _verify(doc, rd, ak_ca_pem=ca_pem)


def _spec_id_event() -> bytes:
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
    spec += struct.pack("<I", 1) + struct.pack("<HH", 0x000B, 32) + b"\x00"
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec


def _event(pcr: int, etype: int, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    return (
        struct.pack("<III", pcr, etype, 1)
        + struct.pack("<H", 0x000B)
        + digest
        + struct.pack("<I", len(data))
        + data
    )


def test_swtpm_event_log_replays(tpm: Swtpm, tmp_path: Path) -> None:
    events = [(9, 0x1, b"kernel"), (9, 0x1, b"initrd"), (14, 0x4, b"\x00\x00\x00\x00")]
    loc = b"StartupLocality\x00\x00"
    locality = struct.pack("<IIIH", 0, 3, 1, 0x000B) + bytes(32) + struct.pack("<I", len(loc)) + loc
    log = _spec_id_event() + locality + b"".join(_event(p, t, d) for p, t, d in events)
    with open_tpm(tpm.address) as t:
        for p, _, d in events:
            t.pcr_extend(p, hashlib.sha256(d).digest())
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(log)
    rd = b"\x04" * 32
    doc = _evidence(tpm, rd, event_log=str(path))
    claims = _verify(doc, rd)
    assert len(claims["uefi_event_logs"]) == 4  # StartupLocality + 3 measurements
    assert claims["pcr09"] == tpm.pcr(9).hex()
    # a log that leaves out an extend does not replay
    short = _spec_id_event() + b"".join(_event(p, t, d) for p, t, d in events[:1] + events[2:])
    doc["event_log"] = base64.b64encode(short).decode()
    with pytest.raises(TpmVerificationError, match="PCR 9"):
        _verify(doc, rd)
    # an event whose digest was edited
    bad = bytearray(log)
    bad[-10] ^= 1
    doc["event_log"] = base64.b64encode(bytes(bad)).decode()
    with pytest.raises((TpmVerificationError, EventLogFormatError)):
        _verify(doc, rd)


def test_no_tpm_is_unsupported(tmp_path: Path) -> None:
    from attestation.errors import UnsupportedPlatform

    with pytest.raises(UnsupportedPlatform):
        asyncio.run(TpmAttester(f"unix:{tmp_path}/none", ak_handle=AK).get_evidence(b""))
    with pytest.raises(UnsupportedPlatform):
        asyncio.run(TpmAttester(str(tmp_path / "tpmrm9"), ak_handle=AK).get_evidence(b""))


def test_aael_runtime_measurements_extend_tpm_pcrs(tpm: Swtpm, tmp_path: Path) -> None:
    """The AA's event log on TPM PCRs: each AAEL record's SHA-256 digest is
    extended into the PCR; the log replays to the value tpm2-tools reads."""
    from attestation.eventlog import EventLog
    from attestation.tpm.registers import TpmPcrRegisters

    regs = TpmPcrRegisters(tpm.address)
    before = tpm.pcr(23)  # PCRs 17-22 are DRTM: not extendable from locality 0
    log = EventLog(regs, path=tmp_path / "aael", wal_path=tmp_path / "aael.wal", init_pcr=23)
    digest = log.extend("github.com/confidential-containers", "PullImage", '{"image":"a", "digest":"b"}', 23)
    assert tpm.pcr(23) == hashlib.sha256(before + digest).digest() == regs.read(23)
    with pytest.raises(ValueError):
        regs.extend(23, bytes(48))
