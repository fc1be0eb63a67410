"""trustee's ``verifier_config`` sections (``snp_verifier``, ``dcap_verifier``, ``tpm_verifier``,
``nvidia_verifier``) with trustee's own example values (``tests/fixtures/trustee/verifier``):
each setting reaches the verifier. KDS and PCCS are stood in for by HTTP servers on 127.0.0.1
that record what they are asked; the address in trustee's example is swapped for theirs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import AttestationError
from attestation.snp.evidence import SnpEvidence
from attestation.snp.report import AttestationReport
from attestation.tpm.errors import TpmVerificationError
from attestation.tpm.evidence import TpmEvidence
from attestation.tpm.structures import parse_attest
from kbs.cli import main as kbs_main
from kbs.config import effective_config, load_config, parse_as_server_config, parse_config, startup_problems
from kbs.errors import KbsConfigError, PolicyEngineError
from kbs.policy import AttestationPolicies
from kbs.policy_worker import PolicyWorkers
from kbs.storage import MemoryStore
from kbs.trustee_verifiers import VcekSource, verifier_options
from kbs.verifiers import VerifierRegistry

from .conftest import admin_material, config_doc

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UPSTREAM = FIXTURES / "trustee" / "verifier"
SNP = FIXTURES / "evidence" / "snp" / "trustee"
TDX_QUOTE = FIXTURES / "evidence" / "tdx" / "trustee" / "tdx_quote_6.dat"
TPM_EVIDENCE = FIXTURES / "evidence" / "tpm" / "tpm_evidence.json"
#: inside the recorded VCEK's validity
TODAY = datetime(2026, 1, 1, tzinfo=UTC)


def upstream_examples() -> list[dict[str, Any]]:
    """The ``verifier_config`` of every JSON example in trustee's attestation-service config docs."""
    text = (UPSTREAM / "attestation-service_docs_config.md").read_text()
    docs = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]
    return [d["verifier_config"] for d in docs if "verifier_config" in d]


def example(section: str, **match: Any) -> dict[str, Any]:
    for vc in upstream_examples():
        s = vc.get(section)
        if s is not None and all(s.get(k) == v for k, v in match.items()):
            return json.loads(json.dumps(s))
    raise AssertionError(f"no trustee example for {section} {match}")


def kbs_config(tmp: Path, verifier_config: dict[str, Any]) -> Any:
    _, pub = admin_material(tmp)
    doc = config_doc(
        tmp, pub, attestation_service={"type": "coco_as_builtin", "verifier_config": verifier_config}
    )
    return parse_config(doc)


def registry(cfg: Any) -> VerifierRegistry:
    return VerifierRegistry(options=verifier_options(cfg.attestation_service))


def test_manifest_hashes() -> None:
    rows = [
        ln.split("\t") for ln in (UPSTREAM / "MANIFEST").read_text().splitlines() if not ln.startswith("#")
    ]
    assert len(rows) == 3
    for local, _upstream, digest in rows:
        assert hashlib.sha256((UPSTREAM / local).read_bytes()).hexdigest() == digest


def test_every_upstream_example_loads_and_is_shown_by_check(tmp_path: Path) -> None:
    examples = upstream_examples()
    assert {k for vc in examples for k in vc} == {
        "snp_verifier",
        "dcap_verifier",
        "tpm_verifier",
        "nvidia_verifier",
    }
    for vc in examples:
        cfg = kbs_config(tmp_path, vc)
        shown = effective_config(cfg)["attestation_service"]["trustee_verifier_config"]
        for section in vc:
            assert shown[section] is not None, section
    cfg = kbs_config(
        tmp_path,
        {
            "snp_verifier": example(
                "snp_verifier", vcek_sources=[{"type": "KDS", "base_url": "https://kdsintf.amd.com"}]
            )
        },
    )
    shown = effective_config(cfg)["attestation_service"]["trustee_verifier_config"]
    assert shown["snp_verifier"]["vcek_sources"] == [
        {"type": "KDS", "base_url": "https://kdsintf.amd.com", "path": None}
    ]
    assert shown["applied_to"] == {"snp_verifier": ["snp"]}
    cfg = kbs_config(tmp_path, {"dcap_verifier": example("dcap_verifier")})
    shown = effective_config(cfg)["attestation_service"]["trustee_verifier_config"]
    assert shown["dcap_verifier"]["tcb_update_type"] == "early"
    assert shown["applied_to"]["dcap_verifier"] == ["tdx", "sgx", "az-tdx-vtpm"]


def test_attestation_service_config_files(tmp_path: Path) -> None:
    """trustee's grpc-as configs: the TPM example and docker-compose's (NVIDIA Remote)."""
    doc = json.loads(
        (UPSTREAM / "attestation-service_tests_configs_example_with_tpm_verifier.json").read_text()
    )
    a, _, warnings = parse_as_server_config(doc)
    tpm = a.trustee_verifier_config.tpm_verifier
    assert tpm is not None and (tpm.trusted_ak_keys_dir, tpm.max_trusted_ak_keys) == (
        "/etc/tpm/trusted_ak_keys",
        50,
    )
    assert any("no trusted AK key in /etc/tpm/trusted_ak_keys" in w for w in warnings)
    doc = json.loads((UPSTREAM / "kbs_config_docker-compose_as-config.json").read_text())
    a, _, _ = parse_as_server_config(doc)
    nv = a.trustee_verifier_config.nvidia_verifier
    assert nv is not None and nv.type == "Remote"


# -- SNP: vcek_sources ------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Answers GETs from ``routes`` (path -> body) and records every path with its query."""

    routes: dict[str, bytes] = {}
    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        body = type(self).routes.get(urllib.parse.urlsplit(self.path).path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"routes": {}, "hits": []})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def _snp_evidence_without_chain() -> tuple[dict[str, Any], AttestationReport]:
    report = AttestationReport.from_bytes((SNP / "test-report.bin").read_bytes())
    return SnpEvidence(report, None).to_json(), report


def test_snp_kds_source_is_asked_at_the_configured_url(tmp_path: Path, server: tuple[str, Any]) -> None:
    url, handler = server
    ev, report = _snp_evidence_without_chain()
    handler.routes[f"/vcek/v1/Milan/{report.chip_id.hex()}"] = (SNP / "test-vcek.der").read_bytes()
    section = example("snp_verifier", vcek_sources=[{"type": "KDS", "base_url": "https://kdsintf.amd.com"}])
    section["vcek_sources"][0]["base_url"] = url
    v = registry(kbs_config(tmp_path, {"snp_verifier": section})).get("snp")
    assert v.verify_evidence(ev, now=TODAY).report.chip_id == report.chip_id  # type: ignore[attr-defined]
    assert len(handler.hits) == 1
    assert handler.hits[0].startswith(f"/vcek/v1/Milan/{report.chip_id.hex()}?blSPL=")


def test_snp_offline_store_then_kds_in_order(tmp_path: Path, server: tuple[str, Any]) -> None:
    url, handler = server
    ev, report = _snp_evidence_without_chain()
    store = tmp_path / "kds-store"
    section = example(
        "snp_verifier",
        vcek_sources=[{"type": "OfflineStore", "path": "/var/lib/attestation-service/kds-store"}],
    )
    section["vcek_sources"][0]["path"] = str(store)
    section["vcek_sources"].append({"type": "KDS", "base_url": url})
    cfg = kbs_config(tmp_path, {"snp_verifier": section})
    # the store is empty and KDS has nothing: both are tried, in order, and the report is refused
    with pytest.raises(AttestationError, match=r"OfflineStore: .*KDS: "):
        registry(cfg).get("snp").verify_evidence(ev, now=TODAY)  # type: ignore[attr-defined]
    asked = len(handler.hits)  # a v2 report names no product: each generation's URL is asked
    assert asked >= 1 and all(h.startswith("/vcek/v1/") for h in handler.hits)
    # trustee's layout: <path>/vcek/<hwid>/vcek.der -> found there, KDS is not asked
    (store / "vcek" / report.chip_id.hex()).mkdir(parents=True)
    (store / "vcek" / report.chip_id.hex() / "vcek.der").write_bytes((SNP / "test-vcek.der").read_bytes())
    registry(cfg).get("snp").verify_evidence(ev, now=TODAY)  # type: ignore[attr-defined]
    assert len(handler.hits) == asked


def test_snp_sources_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(KbsConfigError, match=r"vcek_sources\[0\]\.type is 'Kds'"):
        kbs_config(tmp_path, {"snp_verifier": {"vcek_sources": [{"type": "Kds"}]}})
    cfg = kbs_config(tmp_path, {"snp_verifier": {}})  # trustee's default: [KDS at kdsintf.amd.com]
    assert cfg.attestation_service.trustee_verifier_config.snp_verifier.vcek_sources == (VcekSource("KDS"),)
    cfg = kbs_config(tmp_path, {"snp_verifier": {"vcek_sources": [{"type": "KDS", "base_urll": "x"}]}})
    assert any("base_urll" in w and "did you mean base_url" in w for w in cfg.warnings)
    # one source named twice (ours and trustee's) is refused
    with pytest.raises(KbsConfigError, match=r"snp_verifier and snp.kds_fetch"):
        kbs_config(tmp_path, {"snp_verifier": {}, "snp": {"kds_fetch": True}})


# -- DCAP: collateral_service, tcb_update_type -------------------------------------------------


@pytest.mark.parametrize("update", ["early", "standard"])
def test_dcap_collateral_service_and_update_type(
    tmp_path: Path, server: tuple[str, Any], update: str
) -> None:
    url, handler = server
    section = example("dcap_verifier")
    # trustee's example names Intel's PCS with its path; trustee keeps only scheme and host
    section["collateral_service"] = section["collateral_service"].replace(
        "https://api.trustedservices.intel.com", url
    )
    section["tcb_update_type"] = update
    for path in (
        "sgx/certification/v4/pckcrl",
        "tdx/certification/v4/tcb",
        "tdx/certification/v4/qe/identity",
    ):
        handler.routes["/" + path] = b"not collateral"
    reg = registry(kbs_config(tmp_path, {"dcap_verifier": section}))
    for tee in ("tdx", "sgx", "az-tdx-vtpm"):
        reg.get(tee)  # every DCAP TEE takes the setting
    with pytest.raises(AttestationError):  # the stand-in serves no usable collateral
        reg.get("tdx").verify_quote_bytes(TDX_QUOTE.read_bytes(), now=TODAY)  # type: ignore[attr-defined]
    assert f"/tdx/certification/v4/tcb?fmspc=00A06D080000&update={update}" in handler.hits
    assert f"/tdx/certification/v4/qe/identity?update={update}" in handler.hits
    crl = [h for h in handler.hits if h.startswith("/sgx/certification/v4/pckcrl")]
    assert crl and "update=" not in crl[0]


def test_dcap_options_that_do_not_apply_are_warnings(tmp_path: Path) -> None:
    cfg = kbs_config(
        tmp_path,
        {"dcap_verifier": {"collateral_service": "file:///var/pcs.json", "use_secure_cert": False}},
    )
    assert any("use_secure_cert is not applied" in w for w in cfg.warnings)
    assert any("collateral_service file:///var/pcs.json is not applied" in w for w in cfg.warnings)
    assert "dcap_verifier" not in cfg.attestation_service.trustee_verifier_config.applied_to
    assert "collateral" not in verifier_options(cfg.attestation_service).get("tdx", {})
    with pytest.raises(KbsConfigError, match="tcb_update_type is 'Early'"):
        kbs_config(
            tmp_path, {"dcap_verifier": {"collateral_service": "https://pccs", "tcb_update_type": "Early"}}
        )
    with pytest.raises(KbsConfigError, match="collateral_service is required"):
        kbs_config(tmp_path, {"dcap_verifier": {}})


# -- TPM: trusted_ak_keys_dir ------------------------------------------------------------------


def _tpm_verify(reg: VerifierRegistry) -> dict[str, Any]:
    doc = json.loads(TPM_EVIDENCE.read_bytes())
    rd = parse_attest(base64.b64decode(doc["tpm_quote"]["message"])).extra_data[:48]
    claims: dict[str, Any] = reg.get("tpm").verify(
        doc, expected_report_data=rd, expected_init_data_hash=None, now=TODAY
    )
    return claims


def test_tpm_trusted_ak_keys_dir(tmp_path: Path) -> None:
    section = json.loads(
        (UPSTREAM / "attestation-service_tests_configs_example_with_tpm_verifier.json").read_text()
    )["verifier_config"]["tpm_verifier"]
    keys = tmp_path / "trusted_ak_keys"
    section["trusted_ak_keys_dir"] = str(keys)
    # no key in the directory: the AK is left to the policy, as trustee
    assert _tpm_verify(registry(kbs_config(tmp_path, {"tpm_verifier": section})))["ak_trust"] == "policy"
    keys.mkdir()
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = serialization.PublicFormat.SubjectPublicKeyInfo
    (keys / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM, pem))
    with pytest.raises(TpmVerificationError, match="neither configured nor certified"):
        _tpm_verify(registry(kbs_config(tmp_path, {"tpm_verifier": section})))
    ak = TpmEvidence(json.loads(TPM_EVIDENCE.read_bytes())).ak_key()
    (keys / "z-ak.pem").write_bytes(ak.public_bytes(serialization.Encoding.PEM, pem))
    assert _tpm_verify(registry(kbs_config(tmp_path, {"tpm_verifier": section})))["ak_trust"] == "configured"
    # max_trusted_ak_keys: only the first N files (sorted) are read
    section["max_trusted_ak_keys"] = 1
    with pytest.raises(TpmVerificationError):
        _tpm_verify(registry(kbs_config(tmp_path, {"tpm_verifier": section})))
    (keys / "junk.pem").write_text("not a key")
    section["max_trusted_ak_keys"] = 100
    with pytest.raises(KbsConfigError, match=r"junk.pem is not a PEM public key"):
        verifier_options(kbs_config(tmp_path, {"tpm_verifier": section}).attestation_service)
    # kbs --check names it before a start is tried
    (problem,) = startup_problems(kbs_config(tmp_path, {"tpm_verifier": section}))
    assert problem.startswith("attestation_service.verifier_config.tpm_verifier.trusted_ak_keys_dir:")


# -- NVIDIA: Local / Remote --------------------------------------------------------------------


def test_nvidia_remote_is_refused_at_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        startup_problems(kbs_config(tmp_path, {"nvidia_verifier": example("nvidia_verifier", type="Local")}))
        == []
    )
    remote = example("nvidia_verifier", type="Remote")
    problems = startup_problems(kbs_config(tmp_path, {"nvidia_verifier": remote}))
    assert len(problems) == 1 and "NRAS" in problems[0] and "nras.attestation.nvidia.com" in problems[0]
    with pytest.raises(KbsConfigError, match=r"nvidia_verifier.type is 'cloud'"):
        kbs_config(tmp_path, {"nvidia_verifier": {"type": "cloud"}})
    # kbs --check: the settings in the effective JSON, the problem named, and --strict fails
    f = tmp_path / "kbs.toml"
    f.write_text(
        '[http_server]\ninsecure_http = true\n[admin]\nauthorization_mode = "DenyAll"\n'
        '[attestation_service.verifier_config.nvidia_verifier]\ntype = "Remote"\n'
        "[attestation_service.verifier_config.snp_verifier]\n"
        'vcek_sources = [{ type = "OfflineStore", path = "/srv/kds" }]\n'
    )
    assert kbs_main(["--config-file", str(f), "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    tv = report["config"]["attestation_service"]["trustee_verifier_config"]
    assert tv["nvidia_verifier"] == {"type": "Remote", "verifier_url": None}
    assert tv["snp_verifier"]["vcek_sources"] == [
        {"type": "OfflineStore", "base_url": None, "path": "/srv/kds"}
    ]
    assert report["would_start"] is False and "NRAS" in report["startup_problems"][0]
    assert kbs_main(["--config-file", str(f), "--check", "--strict"]) == 1


async def test_grpc_as_refuses_docker_composes_remote_nvidia_verifier() -> None:
    """trustee's docker-compose AS config asks for NRAS: the separate AS does not start on it."""
    from kbs.grpc_as import build_service

    doc = json.loads((UPSTREAM / "kbs_config_docker-compose_as-config.json").read_text())
    with pytest.raises(KbsConfigError, match="NRAS"):
        await build_service(doc)


def test_trustee_kbs_test_config_loads_its_tpm_section() -> None:
    cfg = load_config(str(FIXTURES / "trustee" / "configs" / "test_config_kbs.toml"))
    tpm = cfg.attestation_service.trustee_verifier_config.tpm_verifier
    assert tpm is not None and tpm.trusted_ak_keys_dir == "./work/attestation-service/tpm_trusted_keys"
    assert not any("kept but not applied" in w for w in cfg.warnings)


# -- device TEE classes without a policy -------------------------------------------------------


async def test_a_tee_class_without_a_policy_fails_as_in_trustee() -> None:
    workers = PolicyWorkers(1, timeout_s=5.0)
    try:
        policies = AttestationPolicies(MemoryStore(), workers)
        for cls in ("dcu", "nvidia-dpu"):  # hygondcu, nvidia-dpu: trustee has no default policy either
            with pytest.raises(PolicyEngineError, match=f"no attestation policy default_{cls}"):
                await policies.appraise(cls, {}, {})
        # an uploaded default_dcu is used
        await policies.set("default_dcu", b'package policy\ntrust_claims := {"hardware": 2}\n')
        assert (await policies.appraise("dcu", {}, {})).trust_vector == {"hardware": 2}
    finally:
        await workers.close()
