"""trustee's ``[attestation_service.verifier_config]`` sections, read with
trustee v0.21's spelling and applied to this KBS's verifiers.

=================  =====================================================  ==========================
section            trustee's keys                                          applied to
=================  =====================================================  ==========================
``snp_verifier``   ``vcek_sources``: ``[{type = "KDS", base_url}``,         ``snp``: the VCEK of a
                   ``{type = "OfflineStore", path}]`` tried in order        report without a chain
``dcap_verifier``  ``collateral_service`` (PCS/PCCS URL; its path is        ``tdx``, ``sgx``,
                   ignored, as trustee does), ``tcb_update_type``           ``az-tdx-vtpm``: TCB
                   (``early``/``standard``, sent as ``update=``)            collateral
``tpm_verifier``   ``trusted_ak_keys_dir``, ``max_trusted_ak_keys``         ``tpm``: trusted AKs
``nvidia_verifier`` ``type`` ``Local`` / ``Remote`` (+ ``verifier_url``)    ``nvidia``: ``Local`` only
=================  =====================================================  ==========================

What does not apply here is a warning naming the key: ``dcap_verifier.use_secure_cert`` (trustee
v0.21 reads it and never uses it; TLS is always verified here), a ``file://`` collateral service
(Intel's PCS Client Tool format, which this KBS's collateral reader does not read), unknown keys
(trustee's serde ignores them too). ``nvidia_verifier.type = "Remote"`` asks for NVIDIA's NRAS,
a cloud service this KBS does not call: :func:`startup_problems` names it, so ``kbs --check``
fails and the KBS does not start with it. Without a section this KBS keeps its own defaults
(no network fetches: ``verifier_config.<tee>`` options turn them on), which differ from trustee's
(fetch from AMD KDS / Intel PCS): listed in README's differences.

trustee v0.21 builds its TPM verifier without a config (``TpmVerifier::default()``), so its
``tpm_verifier`` keys are documented but not applied there; here they are: PEM public keys in
``trusted_ak_keys_dir`` (at most ``max_trusted_ak_keys`` files) are the AKs trusted. A missing or
empty directory trusts no key in particular and leaves the AK to the attestation policy, which is
what trustee does."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from attestation.snp.certs import MAX_CERT_FILE, EndorsementCert, ProductRoots, RevocationList
from attestation.snp.endorsements import KDS_BASE_URL, KdsClient
from attestation.snp.errors import (
    CertificateFormatError,
    EndorsementKeyUnavailable,
    RevocationListUnavailable,
)
from attestation.snp.report import AttestationReport
from coco_common.fields import Fields
from coco_common.files import read_bounded

from .errors import KbsConfigError

if TYPE_CHECKING:
    from datetime import datetime

    import httpx

    from .config import AttestationServiceConfig

__all__ = [
    "DCAP_TEES",
    "SECTIONS",
    "DcapSettings",
    "NvidiaSettings",
    "SnpSettings",
    "TpmSettings",
    "TrusteeVerifierConfig",
    "VcekSource",
    "VcekSources",
    "check_overlaps",
    "parse_trustee_verifier_config",
    "trustee_verifier_problems",
    "verifier_options",
]

log = logging.getLogger(__name__)

#: the ``verifier_config`` sections trustee's verifier crate reads
SECTIONS = ("snp_verifier", "dcap_verifier", "tpm_verifier", "nvidia_verifier")
#: the TEEs trustee builds with ``dcap_verifier`` (``deps/verifier/src/lib.rs``)
DCAP_TEES = ("tdx", "sgx", "az-tdx-vtpm")
#: trustee's defaults (``snp/mod.rs``, ``intel_dcap/mod.rs``, the attestation-service config docs)
OFFLINE_STORE_PATH = "/opt/confidential-containers/attestation-service/kds-store"
TRUSTED_AK_KEYS_DIR = "/etc/tpm/trusted_ak_keys"
MAX_TRUSTED_AK_KEYS = 100
_MAX_AK_FILE = 16 * 1024
_PCCS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class VcekSource:
    """One of trustee's ``VCEKSource`` variants: ``KDS`` (``base_url``) or ``OfflineStore``
    (``path``, holding ``vcek/<hwid>/vcek.der``)."""

    type: str
    base_url: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class SnpSettings:
    vcek_sources: tuple[VcekSource, ...] = (VcekSource("KDS"),)


@dataclass(frozen=True)
class DcapSettings:
    collateral_service: str
    tcb_update_type: str = "early"
    #: the TEEs these settings reach
    applies_to: tuple[str, ...] = DCAP_TEES


@dataclass(frozen=True)
class TpmSettings:
    trusted_ak_keys_dir: str = TRUSTED_AK_KEYS_DIR
    max_trusted_ak_keys: int = MAX_TRUSTED_AK_KEYS


@dataclass(frozen=True)
class NvidiaSettings:
    type: str = "Local"
    verifier_url: str | None = None


@dataclass(frozen=True)
class TrusteeVerifierConfig:
    """The sections given (None: absent, this KBS's own defaults apply)."""

    snp_verifier: SnpSettings | None = None
    dcap_verifier: DcapSettings | None = None
    tpm_verifier: TpmSettings | None = None
    nvidia_verifier: NvidiaSettings | None = None
    #: section -> TEEs it reaches (for ``kbs --check``)
    applied_to: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# -- reading ---------------------------------------------------------------------------------------


def _reader(tbl: Any, section: str) -> Fields:
    return Fields(tbl, error=KbsConfigError, where=f"attestation_service.verifier_config.{section}")


def _finish(f: Fields, warn: Callable[[str], None]) -> None:
    f.done()
    for note in f.notes:
        warn(f"{note}: ignored (trustee's verifier ignores it too)")
    f.notes.clear()


def _snp(tbl: Any, warn: Callable[[str], None]) -> SnpSettings:
    f = _reader(tbl, "snp_verifier")
    raw = f.list("vcek_sources", Mapping)
    _finish(f, warn)
    if raw is None:
        return SnpSettings()
    sources: list[VcekSource] = []
    for i, item in enumerate(raw):
        s = Fields(item, error=KbsConfigError, where=f"{f.where}.vcek_sources[{i}]")
        kind = s.str("type", required=True)
        if kind == "KDS":
            sources.append(VcekSource("KDS", base_url=s.str("base_url")))
        elif kind == "OfflineStore":
            sources.append(VcekSource("OfflineStore", path=s.str("path")))
        else:
            raise s.fail("type", f"is {kind!r}: trustee's VCEK sources are KDS and OfflineStore")
        _finish(s, warn)
    if not sources:
        warn(f"{f.where}.vcek_sources is empty: a report without its VCEK in the evidence is refused")
    for src in sources:
        if src.base_url is not None and urlsplit(src.base_url).scheme not in ("https", "http"):
            raise KbsConfigError(f"{f.where}.vcek_sources: base_url {src.base_url!r} is not an http(s) URL")
        if src.base_url is not None and src.base_url.startswith("http://"):
            warn(
                f"{f.where}.vcek_sources: KDS base_url {src.base_url} is plain HTTP (VCEKs are still checked)"
            )
    return SnpSettings(tuple(sources))


def _dcap(tbl: Any, warn: Callable[[str], None]) -> DcapSettings:
    f = _reader(tbl, "dcap_verifier")
    service = f.str("collateral_service", required=True)
    assert service is not None
    update = f.str("tcb_update_type", "early")
    if update not in ("early", "standard"):
        raise f.fail("tcb_update_type", f'is {update!r}: trustee\'s values are "early" and "standard"')
    if f.bool("use_secure_cert") is not None:
        warn(
            f"{f.name('use_secure_cert')} is not applied: trustee v0.21 reads it and never uses it; "
            "the collateral service's TLS certificate is always verified here"
        )
    _finish(f, warn)
    scheme = urlsplit(service).scheme
    if scheme == "file":
        warn(
            f"{f.name('collateral_service')} {service} is not applied: a file:// collateral source is "
            "Intel's PCS Client Tool format, which this KBS's collateral reader does not read; TDX/SGX "
            "quotes are verified without TCB collateral (use verifier_config.tdx collateral_service)"
        )
    elif scheme not in ("https", "http") or not urlsplit(service).hostname:
        raise f.fail("collateral_service", f"{service!r} is not an http(s) or file:// URL")
    return DcapSettings(service, update)


def _tpm(tbl: Any, warn: Callable[[str], None]) -> TpmSettings:
    f = _reader(tbl, "tpm_verifier")
    settings = TpmSettings(
        trusted_ak_keys_dir=f.str("trusted_ak_keys_dir", TRUSTED_AK_KEYS_DIR) or TRUSTED_AK_KEYS_DIR,
        max_trusted_ak_keys=f.int("max_trusted_ak_keys", MAX_TRUSTED_AK_KEYS, min=0) or 0,
    )
    _finish(f, warn)
    if not _ak_files(settings):
        warn(
            f"{f.where}: no trusted AK key in {settings.trusted_ak_keys_dir}: the TPM attestation key "
            "is left to the attestation policy (as trustee v0.21, which does not apply this section)"
        )
    return settings


def _nvidia(tbl: Any, warn: Callable[[str], None]) -> NvidiaSettings:
    f = _reader(tbl, "nvidia_verifier")
    kind = f.str("type", "Local")
    canonical = {"Local": "Local", "local": "Local", "Remote": "Remote", "remote": "Remote"}.get(kind or "")
    if canonical is None:
        raise f.fail("type", f'is {kind!r}: trustee\'s values are "Local" and "Remote"')
    url = f.str("verifier_url")
    if canonical == "Local" and url is not None:
        warn(f'{f.name("verifier_url")} is ignored: it applies to type = "Remote" only')
    _finish(f, warn)
    return NvidiaSettings(canonical, url)


def parse_trustee_verifier_config(
    sections: Mapping[str, Any], warn: Callable[[str], None]
) -> TrusteeVerifierConfig:
    """Read the trustee sections of ``verifier_config`` (others are this KBS's ``<tee>`` tables);
    a :class:`KbsConfigError` names the offending key, ``warn`` gets what is not applied."""
    snp = _snp(sections["snp_verifier"], warn) if "snp_verifier" in sections else None
    dcap = _dcap(sections["dcap_verifier"], warn) if "dcap_verifier" in sections else None
    tpm = _tpm(sections["tpm_verifier"], warn) if "tpm_verifier" in sections else None
    nvidia = _nvidia(sections["nvidia_verifier"], warn) if "nvidia_verifier" in sections else None
    applied: dict[str, tuple[str, ...]] = {}
    if snp is not None:
        applied["snp_verifier"] = ("snp",)
    if dcap is not None and urlsplit(dcap.collateral_service).scheme != "file":
        applied["dcap_verifier"] = DCAP_TEES
    if tpm is not None and _ak_files(tpm):
        applied["tpm_verifier"] = ("tpm",)
    if nvidia is not None:
        applied["nvidia_verifier"] = ("nvidia",)
    return TrusteeVerifierConfig(snp, dcap, tpm, nvidia, applied)


#: this KBS's own ``verifier_config.<tee>`` keys that say the same as a trustee section
_OVERLAPS = {
    "snp_verifier": {"snp": ("kds", "kds_cache_dir", "kds_fetch")},
    "dcap_verifier": {t: ("collateral", "collateral_service", "collateral_cache_dir") for t in DCAP_TEES},
}


def check_overlaps(trustee: TrusteeVerifierConfig, ours: Mapping[str, Any]) -> None:
    """Refuse a config that sets one thing twice: a trustee section and this KBS's own keys
    for the same source (which would win is not obvious)."""
    for section, per_tee in _OVERLAPS.items():
        if getattr(trustee, section) is None or section not in trustee.applied_to:
            continue
        for tee, keys in per_tee.items():
            both = sorted(set(keys) & set(ours.get(tee, {})))
            if both:
                raise KbsConfigError(
                    f"attestation_service.verifier_config: {section} and {tee}.{both[0]} both say where "
                    f"the {tee} verifier's endorsements come from; keep one"
                )


def trustee_verifier_problems(trustee: TrusteeVerifierConfig) -> list[str]:
    """Settings this KBS loads but will not start with (``kbs --check`` lists them)."""
    out: list[str] = []
    n = trustee.nvidia_verifier
    if n is not None and n.type == "Remote":
        url = n.verifier_url or "https://nras.attestation.nvidia.com/v4/attest"
        out.append(
            "attestation_service.verifier_config.nvidia_verifier.type = Remote: NVIDIA's remote "
            f"attestation service (NRAS, {url}) is a cloud service this KBS does not call; use "
            'type = "Local" (the GPU evidence is verified here against NVIDIA\'s roots and RIMs)'
        )
    if trustee.tpm_verifier is not None:
        try:
            _trusted_aks(trustee.tpm_verifier)
        except KbsConfigError as exc:
            out.append(f"attestation_service.verifier_config.{exc.detail}")
    return out


# -- applying --------------------------------------------------------------------------------------


@dataclass
class VcekSources(KdsClient):
    """trustee's ``vcek_sources``: each source is tried in order and the first VCEK found is used
    (it is then verified against AMD's pinned roots like any other). ``OfflineStore`` reads
    ``<path>/vcek/<hwid>/vcek.der`` (trustee's layout; Turin's hwid is the first 8 bytes of
    CHIP_ID), ``KDS`` asks ``<base_url>/vcek/v1/...``. The CRL comes from the first KDS source."""

    sources: tuple[VcekSource, ...] = ()

    def _kds(self, src: VcekSource) -> KdsClient:
        return KdsClient(http=self.http, offline=self.http is None, base_url=src.base_url or KDS_BASE_URL)

    def _offline(self, src: VcekSource, report: AttestationReport) -> EndorsementCert:
        root = Path(src.path or OFFLINE_STORE_PATH)
        for product in self._products(report):
            hwid = report.chip_id[:8] if product.turin_like else report.chip_id
            p = root / "vcek" / hwid.hex() / "vcek.der"
            try:
                data = read_bounded(p, MAX_CERT_FILE)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise EndorsementKeyUnavailable(f"offline VCEK store {p}: {exc}") from exc
            try:
                return EndorsementCert.from_bytes(data)
            except CertificateFormatError as exc:
                raise EndorsementKeyUnavailable(f"offline VCEK store {p} holds no VCEK") from exc
        raise EndorsementKeyUnavailable(f"offline VCEK store {root} has no VCEK for this chip")

    def get_vcek(self, report: AttestationReport) -> EndorsementCert:
        reasons: list[str] = []
        for src in self.sources:
            try:
                if src.type == "OfflineStore":
                    return self._offline(src, report)
                return self._kds(src).get_vcek(report)
            except EndorsementKeyUnavailable as exc:
                log.debug("VCEK source %s failed: %s", src, exc)
                reasons.append(f"{src.type}: {exc}")
        raise EndorsementKeyUnavailable(
            "no configured VCEK source (snp_verifier.vcek_sources) gave one: " + "; ".join(reasons)
        )

    def get_crl(self, roots: ProductRoots, *, now: datetime) -> RevocationList:
        for src in self.sources:
            if src.type == "KDS":
                return self._kds(src).get_crl(roots, now=now)
        raise RevocationListUnavailable("no KDS among snp_verifier.vcek_sources to fetch the CRL from")


def _ak_files(tpm: TpmSettings) -> list[Path]:
    try:
        names = sorted(os.listdir(tpm.trusted_ak_keys_dir))
    except OSError:
        return []
    files = [Path(tpm.trusted_ak_keys_dir) / n for n in names if not n.startswith(".")]
    return [p for p in files if p.is_file()][: tpm.max_trusted_ak_keys]


def _trusted_aks(tpm: TpmSettings) -> list[str]:
    out: list[str] = []
    for p in _ak_files(tpm):
        try:
            text = read_bounded(p, _MAX_AK_FILE).decode("ascii")
        except (OSError, ValueError) as exc:
            raise KbsConfigError(f"tpm_verifier.trusted_ak_keys_dir: cannot read {p}: {exc}") from exc
        if "-----BEGIN PUBLIC KEY-----" not in text:
            raise KbsConfigError(f"tpm_verifier.trusted_ak_keys_dir: {p} is not a PEM public key")
        out.append(text)
    return out


def _pccs_client(dcap: DcapSettings) -> Any:
    """trustee's PCS client: the service's scheme and host (its path is ignored, endpoints are
    ``/{sgx,tdx}/certification/v4/...``) and ``update=<tcb_update_type>`` on the TCB info and
    QE identity requests."""
    from attestation.tdx.endorsements import PccsClient
    from coco_common.http import sync_client

    u = urlsplit(dcap.collateral_service)

    def add_update(request: httpx.Request) -> None:
        if request.url.path.endswith(("/tcb", "/qe/identity")):
            request.url = request.url.copy_add_param("update", dcap.tcb_update_type)

    client = sync_client(timeout=_PCCS_TIMEOUT_S, event_hooks={"request": [add_update]})
    return PccsClient(f"{u.scheme}://{u.netloc}", client=client)


def verifier_options(a: AttestationServiceConfig) -> dict[str, dict[str, Any]]:
    """Keyword arguments per TEE for :class:`~kbs.verifiers.VerifierRegistry`: this KBS's own
    ``verifier_config.<tee>`` tables plus what trustee's sections say."""
    from coco_common.http import sync_client

    out: dict[str, dict[str, Any]] = {k: dict(v) for k, v in a.verifier_config.items()}
    t = a.trustee_verifier_config
    if t.snp_verifier is not None:
        needs_http = any(s.type == "KDS" for s in t.snp_verifier.vcek_sources)
        kds = VcekSources(
            http=sync_client(timeout=30.0) if needs_http else None,
            offline=not needs_http,
            sources=t.snp_verifier.vcek_sources,
        )
        out.setdefault("snp", {})["kds"] = kds
    if "dcap_verifier" in t.applied_to and t.dcap_verifier is not None:
        pccs = _pccs_client(t.dcap_verifier)
        for tee in DCAP_TEES:
            out.setdefault(tee, {})["collateral"] = pccs
    if t.tpm_verifier is not None:
        keys = _trusted_aks(t.tpm_verifier)
        if keys:
            ours = out.setdefault("tpm", {})
            ours["trusted_ak_keys"] = [*ours.get("trusted_ak_keys", []), *keys]
    return out
