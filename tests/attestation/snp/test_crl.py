"""Revocation: AMD KDS CRLs (signed by the ARK). No real AMD CRL is among the
fixtures, so CRLs here come from the synthetic PKI (same algorithms)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from attestation.snp.certs import MAX_CERT_FILE, RevocationList
from attestation.snp.endorsements import KdsClient, crl_url
from attestation.snp.errors import (
    CertChainInvalid,
    CertificateExpired,
    CertificateRevoked,
    RevocationListUnavailable,
)
from attestation.snp.evidence import CertTableEntry, SnpEvidence
from attestation.snp.kbs import SnpVerifier
from attestation.snp.report import AttestationReport, Product, TcbVersion
from attestation.snp.verify import VerifiedReport, check_revocation, verify_report
from attestation.verify_cli import main

from .synth import NOW, SynthPki, build_report, endorsement, sign

TCB = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115)


def _signed(pki: SynthPki) -> tuple[bytes, bytes]:
    key, der = pki.leaf(tcb=TCB, hwid=bytes(range(64)))
    return sign(build_report(tcb=TCB), key), der


def _verified(pki: SynthPki) -> VerifiedReport:
    raw, der = _signed(pki)
    return verify_report(AttestationReport.from_bytes(raw), endorsement(der), trust=pki.trust(), now=NOW)


def test_crl_checks(pki_milan: SynthPki) -> None:
    v = _verified(pki_milan)
    roots = pki_milan.roots
    clean = RevocationList.from_bytes(pki_milan.crl([12345]), roots)
    check_revocation(v, clean, now=NOW)
    leaf = RevocationList.from_bytes(pki_milan.crl([v.endorsement.cert.serial_number]), roots)
    with pytest.raises(CertificateRevoked, match="VCEK certificate is revoked"):
        check_revocation(v, leaf, now=NOW)
    ask = RevocationList.from_bytes(pki_milan.crl([roots.ask.serial_number]), roots)
    with pytest.raises(CertificateRevoked, match="intermediate"):
        check_revocation(v, ask, now=NOW)
    stale = RevocationList.from_bytes(pki_milan.crl(next_=datetime(2025, 1, 1, tzinfo=UTC)), roots)
    with pytest.raises(CertificateExpired, match="CRL is not current"):
        check_revocation(v, stale, now=NOW)
    with pytest.raises(CertChainInvalid, match="not signed by ARK-Milan"):
        RevocationList.from_bytes(pki_milan.crl(signer=pki_milan.ask_key), roots)
    with pytest.raises(CertChainInvalid, match="CRL is for Genoa"):
        genoa = SynthPki.create(Product.GENOA)
        check_revocation(v, RevocationList.from_bytes(genoa.crl(), genoa.roots), now=NOW)


def test_kds_crl_cache_and_fetch(pki_milan: SynthPki, tmp_path: Path) -> None:
    roots = pki_milan.roots
    with pytest.raises(RevocationListUnavailable):
        KdsClient(cache_dir=tmp_path).get_crl(roots, now=NOW)
    seen: list[str] = []
    body = pki_milan.crl([7])

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        return httpx.Response(200, content=body)

    online = KdsClient(
        cache_dir=tmp_path, http=httpx.Client(transport=httpx.MockTransport(handler)), offline=False
    )
    assert online.get_crl(roots, now=NOW).revoked_serials == {7}
    assert seen == [crl_url(Product.MILAN)] == ["https://kdsintf.amd.com/vcek/v1/Milan/crl"]
    assert KdsClient(cache_dir=tmp_path).get_crl(roots, now=NOW).revoked_serials == {7}  # from the cache
    # a cached CRL that is out of date is not used; offline that is an error
    (tmp_path / "crl-milan.der").write_bytes(pki_milan.crl(next_=datetime(2025, 1, 1, tzinfo=UTC)))
    with pytest.raises(RevocationListUnavailable):
        KdsClient(cache_dir=tmp_path).get_crl(roots, now=NOW)
    assert online.get_crl(roots, now=NOW).revoked_serials == {7} and len(seen) == 2


def test_verifier_with_crl(pki_milan: SynthPki, tmp_path: Path) -> None:
    raw, der = _signed(pki_milan)
    report = AttestationReport.from_bytes(raw)
    ev = SnpEvidence(report, (CertTableEntry.of("VCEK", der),)).to_json()
    with pytest.raises(ValueError, match="check_crl needs"):
        SnpVerifier(trust=pki_milan.trust(), check_crl=True)
    v = SnpVerifier(trust=pki_milan.trust(), kds_cache_dir=str(tmp_path), check_crl=True)
    with pytest.raises(RevocationListUnavailable):
        v.verify_evidence(ev, now=NOW)
    (tmp_path / "crl-milan.der").write_bytes(pki_milan.crl([999]))
    assert v.verify(ev, expected_report_data=report.report_data, expected_init_data_hash=None, now=NOW)
    (tmp_path / "crl-milan.der").write_bytes(pki_milan.crl([endorsement(der).cert.serial_number]))
    with pytest.raises(CertificateRevoked):
        v.verify(
            json.dumps(ev), expected_report_data=report.report_data, expected_init_data_hash=None, now=NOW
        )


def test_cli_crl(pki_milan: SynthPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, der = _signed(pki_milan)
    (tmp_path / "r.bin").write_bytes(raw)
    (tmp_path / "vcek.der").write_bytes(der)
    (tmp_path / "roots.pem").write_bytes(pki_milan.roots_pem())
    (tmp_path / "ok.crl").write_bytes(pki_milan.crl([1]))
    (tmp_path / "bad.crl").write_bytes(pki_milan.crl([endorsement(der).cert.serial_number]))
    base = [
        "snp",
        str(tmp_path / "r.bin"),
        "--vcek",
        str(tmp_path / "vcek.der"),
        "--roots",
        str(tmp_path / "roots.pem"),
    ]
    base += ["--at", "2026-06-01T00:00:00Z"]
    assert main(["--strict", *base, "--crl", str(tmp_path / "ok.crl")]) == 3
    capsys.readouterr()
    assert main(["--strict", *base, "--crl", str(tmp_path / "bad.crl")]) == 1
    assert "revoked" in capsys.readouterr().err


def test_kds_crl_answer_is_read_with_a_limit(pki_milan: SynthPki, tmp_path: Path) -> None:
    # a hostile or broken KDS streaming an endless body: reading stops at the limit
    served: list[int] = []

    def endless() -> Iterator[bytes]:
        while len(served) < 1024:  # 64 MiB if nothing stops the reader
            served.append(1)
            yield b"\x30" * 65536

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    kds = KdsClient(
        cache_dir=tmp_path, http=httpx.Client(transport=httpx.MockTransport(handler)), offline=False
    )
    with pytest.raises(RevocationListUnavailable, match="too large"):
        kds.get_crl(pki_milan.roots, now=NOW)
    assert len(served) * 65536 <= MAX_CERT_FILE * 4 + 65536
