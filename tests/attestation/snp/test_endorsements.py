"""The KDS client of :mod:`attestation.snp.endorsements` (mock transport only)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from attestation.snp.endorsements import KdsClient, cache_name, vcek_url
from attestation.snp.errors import EndorsementKeyUnavailable
from attestation.snp.evidence import SnpEvidence
from attestation.snp.kbs import SnpVerifier
from attestation.snp.report import AttestationReport, Product, TcbVersion

from .synth import build_report
from .test_kbs import TODAY, _evidence


def test_vcek_url_formats(fx: Path) -> None:
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    url = vcek_url(r, Product.MILAN)
    assert url == (
        f"https://kdsintf.amd.com/vcek/v1/Milan/{r.chip_id.hex()}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
    )
    tcb = TcbVersion.build(fmc=1, bootloader=2, tee=0, snp=5, microcode=70)
    turin = AttestationReport.from_bytes(build_report(version=5, product=Product.TURIN, tcb=tcb))
    assert vcek_url(turin, Product.TURIN) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=70&fmcSPL=01"
    )


def _kds_transport(
    fx: Path, seen: list[str], *, status: int = 200, body: bytes | None = None
) -> httpx.MockTransport:
    vcek = (fx / "trustee/test-vcek.der").read_bytes()

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        return httpx.Response(status, content=body if body is not None else vcek)

    return httpx.MockTransport(handler)


def test_kds_fetch_then_cache(fx: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    http = httpx.Client(transport=_kds_transport(fx, seen))
    kds = KdsClient(cache_dir=tmp_path, http=http, offline=False)
    v = SnpVerifier(kds=kds)
    ev = _evidence(fx, "trustee/test-report.bin", None)
    report = SnpEvidence.from_json(ev).report
    # v2 report: product unknown, KDS is asked for Milan first and answers
    assert v.verify_evidence(ev, now=TODAY).product is Product.MILAN
    assert seen == [vcek_url(report, Product.MILAN)]
    assert (tmp_path / cache_name(report, Product.MILAN)).read_bytes() == (
        fx / "trustee/test-vcek.der"
    ).read_bytes()
    # second time: from the cache, offline, no request
    offline = SnpVerifier(kds=KdsClient(cache_dir=tmp_path))
    assert offline.verify_evidence(ev, now=TODAY).product is Product.MILAN
    assert len(seen) == 1


def test_kds_offline_and_errors(fx: Path, tmp_path: Path) -> None:
    ev = _evidence(fx, "trustee/test-report.bin", None)
    with pytest.raises(EndorsementKeyUnavailable, match="none cached"):
        SnpVerifier(kds=KdsClient(cache_dir=tmp_path)).verify_evidence(ev, now=TODAY)
    seen: list[str] = []
    notfound = KdsClient(http=httpx.Client(transport=_kds_transport(fx, seen, status=404)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="no VCEK"):
        SnpVerifier(kds=notfound).verify_evidence(ev, now=TODAY)
    assert len(seen) == 3  # one URL per product for a v2 report
    huge = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], body=b"\0" * 100_000)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="too large"):
        SnpVerifier(kds=huge).verify_evidence(ev, now=TODAY)
    junk = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], body=b"junk")), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="not a VCEK"):
        SnpVerifier(kds=junk).verify_evidence(ev, now=TODAY)
    err = KdsClient(http=httpx.Client(transport=_kds_transport(fx, [], status=500)), offline=False)
    with pytest.raises(EndorsementKeyUnavailable, match="HTTP 500"):
        SnpVerifier(kds=err).verify_evidence(ev, now=TODAY)


def test_certs_dir_scan_finds_vlek_and_vcek(fx: Path, tmp_path: Path) -> None:
    (tmp_path / "some-vcek.der").write_bytes((fx / "trustee/test-vcek.der").read_bytes())
    (tmp_path / "other.der").write_bytes((fx / "virtee-sev/vcek_milan.der").read_bytes())
    (tmp_path / "vlek.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes((fx / "trustee/test-vlek.der").read_bytes())
        + b"-----END CERTIFICATE-----\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    kds = KdsClient(cache_dir=tmp_path)
    r = AttestationReport.from_bytes((fx / "trustee/test-report.bin").read_bytes())
    found = kds.cached(r)
    assert found is not None and found.hwid == r.chip_id
    vr = AttestationReport.from_bytes((fx / "trustee/test-vlek-report.bin").read_bytes())
    vlek = kds.get_vcek(vr)
    assert vlek.csp_id == "CN=cc-us-east-2.amazonaws.com"
