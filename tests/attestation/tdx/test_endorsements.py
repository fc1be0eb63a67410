"""Collateral sources (:mod:`attestation.tdx.endorsements`): the PCCS client and its
cache against a PCS look-alike started on 127.0.0.1, and its read limit."""

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

from attestation.tdx.collateral import MAX_COLLATERAL_SIZE, Collateral
from attestation.tdx.endorsements import CollateralCache, PccsClient
from attestation.tdx.errors import CollateralError
from attestation.tdx.verify import verify_quote

from ._data import (
    Q6,
    QVL_TDX_COLL,
    ROOT,
    TDX,
    TRUSTEE_COLL_AT,
    tcb_signing_chain,
)

# --- PCCS client against a local PCS look-alike ---------------------------


class _Pcs(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path)
        type(self).hits.append(path.path)
        chain = urllib.parse.quote(tcb_signing_chain())
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
