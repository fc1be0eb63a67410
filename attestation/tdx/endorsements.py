"""Where DCAP collateral comes from: one fixed bundle
(:class:`StaticCollateral`), a cache folder (:class:`CollateralCache`), or an
Intel PCS / PCCS v4 service (:class:`PccsClient`, optionally through the
cache). Everything served here is only a source: the verifier checks every
signature, chain and date again (:func:`attestation.tdx.collateral.verify_collateral`).
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Protocol

import httpx

from attestation._net import read_bounded
from attestation.tdx.collateral import MAX_COLLATERAL_SIZE, Collateral, QeIdentity, TcbInfo
from attestation.tdx.errors import CollateralError, TdxFormatError
from attestation.tdx.pck import load_pem_chain, parse_pck_extension, pck_ca_kind
from attestation.tdx.quote import Quote
from coco_common.files import read_bounded as read_file_bounded
from coco_common.files import write_atomic
from coco_common.http import sync_client

__all__ = [
    "DEFAULT_PCCS_URL",
    "CollateralCache",
    "CollateralSource",
    "PccsClient",
    "StaticCollateral",
    "collateral_for",
]

DEFAULT_PCCS_URL = "https://api.trustedservices.intel.com"


class CollateralSource(Protocol):
    def get(self, *, fmspc: bytes, ca: str, tdx: bool, now: datetime) -> Collateral | None:
        """Collateral for the platform, or None when none is available."""
        ...


class StaticCollateral:
    """One fixed collateral bundle (offline verification)."""

    def __init__(self, collateral: Collateral) -> None:
        self._collateral = collateral

    def get(self, *, fmspc: bytes, ca: str, tdx: bool, now: datetime) -> Collateral | None:
        return self._collateral


class CollateralCache:
    """A directory of collateral JSON files keyed by TEE, FMSPC and PCK CA.

    Entries are served while their TCB info and QE identity are current at
    ``now``; a stale entry counts as a miss. Entries are only an optimisation:
    everything served is verified again by the verifier.
    """

    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)

    def _path(self, fmspc: bytes, ca: str, tdx: bool) -> Path:
        if ca not in ("platform", "processor"):
            raise CollateralError(f"unknown PCK CA kind {ca!r}")
        return self._dir / f"{'tdx' if tdx else 'sgx'}-{fmspc.hex()}-{ca}.json"

    def get(self, *, fmspc: bytes, ca: str, tdx: bool, now: datetime) -> Collateral | None:
        p = self._path(fmspc, ca, tdx)
        try:
            c = Collateral.from_json(read_file_bounded(p, MAX_COLLATERAL_SIZE))
            tcb = TcbInfo.from_signed_text(c.tcb_info)
            qe = QeIdentity.from_signed_text(c.qe_identity)
        except (OSError, ValueError, CollateralError):  # absent, oversized, malformed: a miss
            return None
        if not (tcb.issue_date <= now <= tcb.next_update and qe.issue_date <= now <= qe.next_update):
            return None
        return c

    def put(self, collateral: Collateral, *, fmspc: bytes, ca: str, tdx: bool) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(fmspc, ca, tdx), collateral.to_json().encode(), mode=0o644)


class PccsClient:
    """Fetches collateral from an Intel PCS or a PCCS (v4 API), optionally
    through a :class:`CollateralCache`. All I/O goes through the injected
    ``httpx.Client`` (tests pass a client bound to a local server)."""

    def __init__(
        self,
        base_url: str = DEFAULT_PCCS_URL,
        *,
        client: httpx.Client | None = None,
        cache: CollateralCache | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        # trust_env: Intel PCS (or a PCCS) may sit behind the host's HTTP(S)_PROXY, as before
        self._client = client or sync_client(timeout=timeout, trust_env=True)
        self._cache = cache

    def _get(self, path: str) -> tuple[httpx.Headers, bytes]:
        what = path.split("?")[0]
        try:
            with self._client.stream("GET", f"{self._base}{path}") as resp:
                if resp.status_code != 200:
                    raise CollateralError(f"PCCS {what} answered HTTP {resp.status_code}")
                body = read_bounded(resp, MAX_COLLATERAL_SIZE)
                headers = resp.headers
        except httpx.HTTPError as exc:
            raise CollateralError(f"PCCS request {what} failed: {type(exc).__name__}") from exc
        if body is None:
            raise CollateralError(f"PCCS {what} answer too large")
        return headers, body

    @staticmethod
    def _header(headers: httpx.Headers, *names: str) -> str:
        for n in names:
            v = headers.get(n)
            if v:
                return urllib.parse.unquote(v)
        raise CollateralError(f"PCCS answer lacks the {names[0]} header")

    @staticmethod
    def _text(body: bytes, what: str) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CollateralError(f"PCCS {what} answer is not UTF-8") from exc

    def get(self, *, fmspc: bytes, ca: str, tdx: bool, now: datetime) -> Collateral | None:
        if self._cache is not None:
            hit = self._cache.get(fmspc=fmspc, ca=ca, tdx=tdx, now=now)
            if hit is not None:
                return hit
        tee = "tdx" if tdx else "sgx"
        crl_headers, crl = self._get(f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
        tcb_headers, tcb = self._get(f"/{tee}/certification/v4/tcb?fmspc={fmspc.hex().upper()}")
        qe_headers, qe = self._get(f"/{tee}/certification/v4/qe/identity")
        root_crl: bytes | None
        try:
            root_crl = self._get("/sgx/certification/v4/rootcacrl")[1]
            if root_crl[:1] != b"\x30":  # PCCS serves hex text
                root_crl = bytes.fromhex(root_crl.decode("ascii").strip())
        except (CollateralError, ValueError, UnicodeDecodeError):
            root_crl = None
        c = Collateral.from_pcs_responses(
            tcb_info_body=self._text(tcb, "tcb"),
            tcb_info_issuer_chain=self._header(
                tcb_headers, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"
            ),
            qe_identity_body=self._text(qe, "qe/identity"),
            qe_identity_issuer_chain=self._header(qe_headers, "SGX-Enclave-Identity-Issuer-Chain"),
            pck_crl=crl,
            pck_crl_issuer_chain=self._header(crl_headers, "SGX-PCK-CRL-Issuer-Chain"),
            root_ca_crl=root_crl,
        )
        if self._cache is not None:
            self._cache.put(c, fmspc=fmspc, ca=ca, tdx=tdx)
        return c


def collateral_for(source: CollateralSource, untrusted_quote: bytes, *, now: datetime) -> Collateral | None:
    """Ask ``source`` for the collateral of the platform that made ``untrusted_quote``
    (its FMSPC and PCK CA, read from the quote's PCK certificate *unverified*: they
    only select what to fetch; the verifier checks everything it is given)."""
    q = Quote.from_bytes(untrusted_quote)
    chain = load_pem_chain(q.signature_data.certification_data.pck_chain_pem(), "PCK chain")
    try:
        pck = parse_pck_extension(chain[0])
        ca = pck_ca_kind(chain)
    except (ValueError, TypeError) as exc:
        raise TdxFormatError("malformed PCK certificate in the quote") from exc
    return source.get(fmspc=pck.fmspc, ca=ca, tdx=q.is_tdx, now=now)
