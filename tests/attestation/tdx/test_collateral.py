"""Collateral: signatures, freshness, TCB matching (checked against dcap-qvl as an
independent implementation), wrong FMSPC, strict JSON, PCCS client and cache
against a PCS look-alike started on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.errors import VerificationError
from attestation.tdx.collateral import (
    MAX_COLLATERAL_SIZE,
    Collateral,
    CollateralCache,
    CollateralError,
    PccsClient,
    TcbInfo,
)
from attestation.tdx.pck import intel_sgx_root_ca
from attestation.tdx.verifier import verify_quote

from ._data import (
    Q4,
    Q6,
    QVL_OUTDATED,
    QVL_OUTDATED_AT,
    QVL_OUTDATED_COLL,
    QVL_SGX,
    QVL_SGX_AT,
    QVL_SGX_COLL,
    QVL_TDX,
    QVL_TDX_AT,
    QVL_TDX_COLL,
    TDX,
    TRUSTEE_COLL_AT,
)

ROOT = intel_sgx_root_ca()


def _coll(p: Path) -> Collateral:
    return Collateral.from_json(p.read_text())


def test_tdx_quote_up_to_date() -> None:
    v = verify_quote(QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=_coll(QVL_TDX_COLL))
    assert v.tcb is not None
    assert (v.tcb.status, v.tcb.platform_status, v.tcb.qe_status, v.tcb.module_status) == (
        "UpToDate",
        "UpToDate",
        "UpToDate",
        "UpToDate",
    )
    assert v.tcb.advisory_ids == ()


def test_sgx_quote_status_and_advisories() -> None:
    v = verify_quote(QVL_SGX.read_bytes(), root_ca=ROOT, now=QVL_SGX_AT, collateral=_coll(QVL_SGX_COLL))
    assert v.tcb is not None and v.pck_ca == "processor"
    assert v.tcb.status == "ConfigurationAndSWHardeningNeeded"
    assert v.tcb.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")


@pytest.mark.parametrize(
    ("quote", "coll", "at"),
    [(QVL_TDX, QVL_TDX_COLL, QVL_TDX_AT), (QVL_SGX, QVL_SGX_COLL, QVL_SGX_AT)],
    ids=["tdx", "sgx"],
)
def test_same_status_as_dcap_qvl(quote: Path, coll: Path, at: datetime) -> None:
    import dcap_qvl  # the differential oracle (a dev dependency)

    root_der = (TDX / "dcap-qvl/TrustedRootCA.der").read_bytes()
    theirs = dcap_qvl.verify_with_root_ca(
        quote.read_bytes(),
        dcap_qvl.QuoteCollateralV3.from_json(coll.read_text()),
        root_der,
        int(at.timestamp()),
    )
    ours = verify_quote(quote.read_bytes(), root_ca=ROOT, now=at, collateral=_coll(coll))
    assert ours.tcb is not None
    assert (ours.tcb.status, list(ours.tcb.advisory_ids)) == (theirs.status, list(theirs.advisory_ids))


def test_outdated_quote_matches_no_tcb_level() -> None:
    with pytest.raises(VerificationError, match="no TCB level"):
        verify_quote(
            QVL_OUTDATED.read_bytes(), root_ca=ROOT, now=QVL_OUTDATED_AT, collateral=_coll(QVL_OUTDATED_COLL)
        )


def test_collateral_for_the_wrong_fmspc() -> None:
    with pytest.raises(CollateralError, match="FMSPC"):
        verify_quote(Q4.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=_coll(QVL_TDX_COLL))


def test_stale_collateral_is_rejected_at_now() -> None:
    with pytest.raises(VerificationError, match=r"expired|not current"):
        verify_quote(
            QVL_TDX.read_bytes(),
            root_ca=ROOT,
            now=datetime(2026, 6, 1, tzinfo=UTC),
            collateral=_coll(QVL_TDX_COLL),
        )
    with pytest.raises(VerificationError, match=r"issued after|not current"):
        verify_quote(
            QVL_TDX.read_bytes(),
            root_ca=ROOT,
            now=datetime(2025, 6, 1, tzinfo=UTC),
            collateral=_coll(QVL_TDX_COLL),
        )

    no_crls = Collateral.from_json(
        json.dumps({**json.loads(QVL_TDX_COLL.read_text()), "root_ca_crl": "", "pck_crl": ""})
    )
    with pytest.raises(CollateralError, match="TCB info expired"):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=datetime(2026, 6, 1, tzinfo=UTC), collateral=no_crls
        )


def test_tampered_tcb_info_fails_its_signature() -> None:
    d = json.loads(QVL_TDX_COLL.read_text())
    d["tcb_info"] = d["tcb_info"].replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"', 1)
    with pytest.raises(VerificationError, match="TCB info: signature"):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=Collateral.from_json(json.dumps(d))
        )


def test_tampered_crl_fails() -> None:
    d = json.loads(QVL_TDX_COLL.read_text())
    crl = bytearray.fromhex(d["pck_crl"])
    crl[40] ^= 1
    d["pck_crl"] = crl.hex()
    with pytest.raises(VerificationError):
        verify_quote(
            QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT, collateral=Collateral.from_json(json.dumps(d))
        )


def test_strict_collateral_json() -> None:
    text = QVL_TDX_COLL.read_text()
    with pytest.raises(CollateralError, match="unknown keys"):
        Collateral.from_json(text[:-1] + ', "extra": 1}')
    with pytest.raises(CollateralError, match="duplicate"):
        Collateral.from_json(text[:-1] + ', "tcb_info": "x"}')
    with pytest.raises(CollateralError):
        Collateral.from_json("[]")


def _tcb_signing_chain() -> str:
    return str(json.loads(QVL_TDX_COLL.read_text())["tcb_info_issuer_chain"])


def _trustee_collateral() -> Collateral:
    return Collateral.from_pcs_responses(
        tcb_info_body=(TDX / "trustee/tcbInfo.json").read_text(),
        tcb_info_issuer_chain=_tcb_signing_chain(),
        qe_identity_body=(TDX / "trustee/enclaveIdentity.json").read_text(),
        qe_identity_issuer_chain=_tcb_signing_chain(),
    )


def test_raw_pcs_responses_quote6_out_of_date() -> None:
    v = verify_quote(Q6.read_bytes(), root_ca=ROOT, now=TRUSTEE_COLL_AT, collateral=_trustee_collateral())
    assert v.tcb is not None
    assert v.tcb.platform_status == "OutOfDate"
    assert v.tcb.module_status == "UpToDate" and v.tcb.qe_status == "UpToDate"
    assert v.tcb.status == "OutOfDate"
    assert TcbInfo.from_signed_text(_trustee_collateral().tcb_info).fmspc.hex() == "00a06d080000"


# --- PCCS client against a local PCS look-alike ---------------------------


class _Pcs(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path)
        type(self).hits.append(path.path)
        chain = urllib.parse.quote(_tcb_signing_chain())
        d = json.loads(QVL_TDX_COLL.read_text())
        if path.path == "/tdx/certification/v4/tcb":
            fmspc = urllib.parse.parse_qs(path.query)["fmspc"][0]
            if fmspc.lower() != "00a06d080000":
                self.send_error(404)
                return
            body, hdr = (TDX / "trustee/tcbInfo.json").read_bytes(), ("TCB-Info-Issuer-Chain", chain)
        elif path.path == "/tdx/certification/v4/qe/identity":
            body, hdr = (
                (TDX / "trustee/enclaveIdentity.json").read_bytes(),
                ("SGX-Enclave-Identity-Issuer-Chain", chain),
            )
        elif path.path == "/sgx/certification/v4/pckcrl":
            body = bytes.fromhex(d["pck_crl"])
            hdr = ("SGX-PCK-CRL-Issuer-Chain", urllib.parse.quote(d["pck_crl_issuer_chain"]))
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header(*hdr)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def pcs() -> Iterator[str]:
    _Pcs.hits = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Pcs)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_pccs_fetch_and_cache(pcs: str, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    with httpx.Client(timeout=5) as http:
        client = PccsClient(pcs, client=http, cache=cache)
        fmspc = bytes.fromhex("00a06d080000")
        c = client.get(fmspc=fmspc, ca="platform", tdx=True, now=TRUSTEE_COLL_AT)
        assert c is not None
        assert _Pcs.hits.count("/tdx/certification/v4/tcb") == 1
        # the CRL served is from mid-2025; verification at a time it covers
        verify_quote(
            Q6.read_bytes(),
            root_ca=ROOT,
            now=TRUSTEE_COLL_AT,
            collateral=c.__class__(**{**c.__dict__, "pck_crl": None, "pck_crl_issuer_chain": ""}),
        )
        again = client.get(fmspc=fmspc, ca="platform", tdx=True, now=TRUSTEE_COLL_AT)
        assert again == Collateral.from_json(c.to_json())
        assert _Pcs.hits.count("/tdx/certification/v4/tcb") == 1  # served from the cache
        # stale cache entry -> fetched again
        client.get(fmspc=fmspc, ca="platform", tdx=True, now=datetime(2025, 12, 15, tzinfo=UTC))
        assert _Pcs.hits.count("/tdx/certification/v4/tcb") == 2
        with pytest.raises(CollateralError, match="HTTP 404"):
            client.get(fmspc=bytes(6), ca="platform", tdx=True, now=TRUSTEE_COLL_AT)


def test_root_pem_roundtrip_is_der_identical() -> None:
    assert ROOT.public_bytes(Encoding.DER)[:2] == b"\x30\x82"


def test_module_svn_is_judged_by_the_module_identity_not_the_platform_level() -> None:
    """Intel's rule: with TEE_TCB_SVN[1] > 0, TDX components 0..1 are skipped in the
    platform match and TDX_01's own levels decide the module status."""
    from dataclasses import replace

    from attestation.tdx.collateral import evaluate_tcb, verify_collateral
    from attestation.tdx.quote import TdReportBody

    coll = verify_collateral(_coll(QVL_TDX_COLL), root=ROOT, now=QVL_TDX_AT)
    v = verify_quote(QVL_TDX.read_bytes(), root_ca=ROOT, now=QVL_TDX_AT)
    body = v.quote.body
    assert isinstance(body, TdReportBody) and body.tee_tcb_svn[:3] == bytes([6, 1, 3])

    def status(svn0: int) -> tuple[str, str | None]:
        q = replace(v.quote, body=replace(body, tee_tcb_svn=bytes([svn0]) + body.tee_tcb_svn[1:]))
        r = evaluate_tcb(q, v.pck, coll)
        return r.status, r.module_status

    assert status(4) == ("UpToDate", "UpToDate")  # below the platform level's component 0 (5): skipped
    assert status(3) == ("OutOfDate", "OutOfDate")  # TDX_01 level isvsvn 2 -> OutOfDate
    with pytest.raises(VerificationError, match="ISVSVN 1"):
        status(1)


def test_pccs_answer_is_read_with_a_limit() -> None:
    # a hostile or broken PCCS streaming an endless body: reading stops at the limit
    served: list[int] = []

    def endless() -> Iterator[bytes]:
        while len(served) < 1024:  # 64 MiB if nothing stops the reader
            served.append(1)
            yield b"x" * 65536

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = PccsClient("http://pccs.invalid", client=http)
        with pytest.raises(CollateralError, match="too large"):
            client.get(fmspc=bytes(6), ca="platform", tdx=True, now=TRUSTEE_COLL_AT)
    assert len(served) * 65536 <= MAX_COLLATERAL_SIZE + 65536
