"""The built-in EAR policies (kbs/policies/default_{cpu,gpu,switch,ppcie}.rego)
give the trust vectors trustee v0.21.0's default policies give on the same
claims and reference values.

Every expectation below was written from reading trustee's Rego at tag
v0.21.0 (commit 258ea4acb7b9), files
``attestation-service/src/ear_token/ear_default_policy_<class>.rego``; each
row names the lines it comes from (``cpu:109-117`` = that file's lines). The
claims are laid out as our verifiers emit them and as the KBS feeds them to
the policy (:func:`kbs.annotated.annotate`, trustee's ``transform_claims``);
the sample and Azure rows run the real verifiers (the Azure ones on
trustee's recorded evidence).

Vector order in the tables: (executables, hardware, configuration); the
other five claims are 0 ("no assertion") in every default policy
(cpu:29-47, gpu:11-19, switch:11-19, ppcie:16-24).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from attestation.sample.kbs import SampleVerifier
from kbs.annotated import AnnotationError, annotate
from kbs.ear import TRUST_CLAIMS, Appraisal, ear_status
from kbs.policy import AttestationPolicies
from kbs.storage import MemoryStore

Vec = tuple[int, int, int]

_OTHERS = ("file-system", "instance-identity", "runtime-opaque", "storage-opaque", "sourced-data")


async def _vector(cls: str, annotated: dict[str, Any], rvs: dict[str, Any]) -> dict[str, int]:
    res = await AttestationPolicies(MemoryStore()).appraise(cls, annotated, rvs)
    return dict(res.trust_vector)


def _check(vec: dict[str, int], want: Vec, status: str) -> None:
    assert (vec["executables"], vec["hardware"], vec["configuration"]) == want
    assert {k: vec[k] for k in _OTHERS} == dict.fromkeys(_OTHERS, 0)
    assert set(vec) == set(TRUST_CLAIMS)
    assert ear_status(vec) == status


# --- claims as our verifiers emit them ---------------------------------------------------------

SNP = {  # attestation/snp/verify.py VerifiedReport.trustee_claims
    "tee_type": "snp",
    "policy_abi_major": 0,
    "policy_abi_minor": 31,
    "policy_smt_allowed": True,
    "policy_migrate_ma": False,
    "policy_debug_allowed": False,
    "policy_single_socket": False,
    "reported_tcb_bootloader": 10,
    "reported_tcb_tee": 0,
    "reported_tcb_snp": 23,
    "reported_tcb_microcode": 213,
    "platform_tsme_enabled": False,
    "platform_smt_enabled": True,
    "measurement": "aa" * 48,
    "report_data": "bb" * 64,
    "init_data": "00" * 32,
}
SNP_RVS = {
    "snp_launch_measurement": ["aa" * 48],
    "snp_bootloader": [10],
    "snp_microcode": [213],
    "snp_snp_svn": [23],
    "snp_tee_svn": [0],
    "snp_smt_enabled": True,
    "snp_tsme_enabled": False,
    "snp_guest_abi_major": 0,
    "snp_guest_abi_minor": 31,
    "snp_single_socket": False,
    "snp_smt_allowed": True,
}

KERNEL = "11" * 48
PARAMS = "22" * 48
TDX = {  # attestation/tdx/verifier.py quote_claims (with collateral: tcb_status set)
    "quote": {
        "header": {"tee_type": "81000000", "vendor_id": "939a7233f79c4ca9940a0db3957f0607"},
        "body": {"mr_td": "c1" * 48, "rtmr_1": "d1" * 48, "rtmr_2": "d2" * 48, "xfam": "e702060000000000"},
    },
    "td_attributes": {"debug": False},
    "uefi_event_logs": [
        {
            "type_name": "EV_EFI_BOOT_SERVICES_APPLICATION",
            "details": {"device_paths": ["PciRoot(0x0)", "File(kernel)"]},
            "digests": [{"alg": "SHA-384", "digest": KERNEL}],
        },
        {
            "type_name": "EV_EVENT_TAG",
            "details": {"string": "LOADED_IMAGE::LoadOptions"},
            "digests": [{"alg": "SHA-384", "digest": PARAMS}],
        },
    ],
    "tcb_status": "UpToDate",
    "collateral_expiration_status": "0",
    "report_data": "bb" * 64,
    "init_data": "00" * 48,
}
TDX_RVS = {
    "rtmr_1": ["d1" * 48],
    "rtmr_2": ["d2" * 48],
    "tdvfkernel": KERNEL,
    "tdvfkernelparams": PARAMS,
    "mr_td": ["c1" * 48],
    "xfam": ["e702060000000000"],
}

TPM = {"pcr11": "0b" * 32, "ak_public": "-----BEGIN PUBLIC KEY-----...", "report_data": "aa", "init_data": ""}
TPM_RVS = {"tpm_pcr11": ["0b" * 32], "trusted_aks": ["-----BEGIN PUBLIC KEY-----..."]}

NRAS_GPU = {  # claims NVIDIA's remote attestation service returns (trustee's Remote mode)
    "x-nvidia-gpu-attestation-report-cert-chain": {
        "x-nvidia-cert-ocsp-status": "good",
        "x-nvidia-cert-status": "valid",
    },
    "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": True,
    "x-nvidia-gpu-attestation-report-parsed": True,
    "x-nvidia-gpu-attestation-report-signature-verified": True,
    "x-nvidia-gpu-arch-check": True,
    "secboot": True,
    "dbgstat": "disabled",
    "x-nvidia-gpu-vbios-version": "96.00.9F.00.04",
    "x-nvidia-gpu-driver-version": "550.90.07",
    "x-nvidia-gpu-vbios-rim-cert-chain": {
        "x-nvidia-cert-ocsp-status": "good",
        "x-nvidia-cert-status": "valid",
    },
    **{
        f"x-nvidia-gpu-{rim}-rim-{check}": True
        for rim in ("driver", "vbios")
        for check in (
            "fetched",
            "measurements-available",
            "schema-validated",
            "signature-verified",
            "version-match",
        )
    },
    "measres": "success",
}
NRAS_SWITCH = {
    "x-nvidia-switch-attestation-report-cert-chain": {
        "x-nvidia-cert-ocsp-status": "good",
        "x-nvidia-cert-status": "valid",
    },
    "x-nvidia-switch-attestation-report-cert-chain-fwid-match": True,
    "x-nvidia-switch-attestation-report-parsed": True,
    "x-nvidia-switch-attestation-report-signature-verified": True,
    "x-nvidia-switch-arch-check": True,
    "secboot": True,
    "dbgstat": "disabled",
    "x-nvidia-switch-bios-version": "96.10.6D.00.01",
    "x-nvidia-switch-bios-rim-cert-chain": {
        "x-nvidia-cert-ocsp-status": "good",
        "x-nvidia-cert-status": "valid",
    },
    **{
        f"x-nvidia-switch-bios-rim-{check}": True
        for check in (
            "fetched",
            "measurements-available",
            "schema-validated",
            "signature-verified",
            "version-match",
        )
    },
    "measres": "success",
}
LOCAL_GPU = {  # attestation/nvidia/verify.py VerifiedDevice.claims(verbose=False)
    "arch": "HOPPER",
    "uuid": "GPU-1",
    "driver_version": "550.90.07",
    "vbios_version": "96.00.9F.00.04",
    "fwid": "ab" * 48,
    "feature_flag": "SPT",
    "nonce_checked": True,
    "fwid_checked": True,
    "measurements_match": True,
    "measurements_sha384": "cd" * 48,
    "rim_versions": ["550.90.07", "96.00.9F.00.04"],
}


def _with(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(changes)
    return out


def _tdx(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(TDX)
    for path, value in changes.items():
        cur = out
        *parents, last = path.split("__")
        for p in parents:
            cur = cur[p]
        cur[last] = value
    return out


CPU_ROWS: list[tuple[str, str, dict[str, Any], dict[str, Any], Vec, str]] = [
    # (case, tee, verifier claims, reference values, expected vector, ear.status)
    # snp — cpu:102-107 executables, :109-117 hardware, :123-134 configuration 2, :143-148 else 3
    ("snp-no-rvs", "snp", SNP, {}, (33, 97, 3), "contraindicated"),
    ("snp-all-rvs", "snp", SNP, SNP_RVS, (3, 2, 2), "affirming"),
    ("snp-tcb-unknown", "snp", _with(SNP, reported_tcb_snp=22), SNP_RVS, (3, 97, 2), "contraindicated"),
    ("snp-smt-differs", "snp", _with(SNP, platform_smt_enabled=False), SNP_RVS, (3, 2, 3), "affirming"),
    ("snp-debug", "snp", _with(SNP, policy_debug_allowed=True), SNP_RVS, (3, 2, 36), "warning"),
    ("snp-migration-agent", "snp", _with(SNP, policy_migrate_ma=True), SNP_RVS, (3, 2, 36), "warning"),
    # the names this KBS's policy used before (snp_min_tcb_snp) mean nothing to trustee's
    (
        "snp-old-rv-name",
        "snp",
        SNP,
        {"snp_min_tcb_snp": 0, "snp_launch_measurement": ["aa" * 48]},
        (3, 97, 3),
        "contraindicated",
    ),
    # tdx — cpu:151-159 executables 3, :162-168 else 4, :170-213 hardware, :215-221 configuration,
    # :223-239 the UEFI kernel / LoadOptions events
    ("tdx-no-rvs", "tdx", TDX, {}, (33, 97, 36), "contraindicated"),
    ("tdx-all-rvs", "tdx", TDX, TDX_RVS, (3, 2, 2), "affirming"),
    ("tdx-grub-no-kernel-event", "tdx", _tdx(uefi_event_logs=[]), TDX_RVS, (4, 2, 2), "affirming"),
    ("tdx-rtmr2-unknown", "tdx", _tdx(quote__body__rtmr_2="00" * 48), TDX_RVS, (33, 2, 2), "warning"),
    ("tdx-out-of-date", "tdx", _tdx(tcb_status="OutOfDate"), TDX_RVS, (3, 97, 2), "contraindicated"),
    (
        "tdx-no-collateral",
        "tdx",
        _tdx(tcb_status=None, collateral_expiration_status=None),
        TDX_RVS,
        (3, 97, 2),
        "contraindicated",
    ),
    (
        "tdx-wrong-vendor",
        "tdx",
        _tdx(quote__header__vendor_id="00" * 16),
        TDX_RVS,
        (3, 97, 2),
        "contraindicated",
    ),
    ("tdx-debug", "tdx", _tdx(td_attributes={"debug": True}), TDX_RVS, (3, 2, 36), "warning"),
    # the name this KBS's policy used before (mr_config_id) means nothing to trustee's
    (
        "tdx-old-rv-name",
        "tdx",
        TDX,
        {"mr_td": ["c1" * 48], "mr_config_id": ["00" * 48]},
        (33, 2, 36),
        "warning",
    ),
    # tpm — cpu:307-309 hardware always 2, :311-317 executables, :319-321 configuration 0
    ("tpm-no-rvs", "tpm", TPM, {}, (33, 2, 0), "warning"),
    ("tpm-all-rvs", "tpm", TPM, TPM_RVS, (3, 2, 0), "affirming"),
    ("tpm-unknown-ak", "tpm", TPM, {**TPM_RVS, "trusted_aks": ["other"]}, (33, 2, 0), "warning"),
    # se — cpu:329-339: the verifier's success is the appraisal
    ("se", "se", {"version": 256, "report_data": "aa"}, {}, (3, 2, 2), "affirming"),
    # no rules in trustee's default CPU policy: the defaults (cpu:17-27) whatever the reference values
    (
        "sgx",
        "sgx",
        {"body": {"mr_enclave": "aa" * 32}, "report_data": "bb", "init_data": "00"},
        {"mr_enclave": ["aa" * 32]},
        (33, 97, 36),
        "contraindicated",
    ),
    (
        "cca",
        "cca",
        {"realm": {"cca-realm-initial-measurement": "aa"}, "report_data": "bb", "init_data": "00"},
        {},
        (33, 97, 36),
        "contraindicated",
    ),
    (
        "csv",
        "csv",
        {"measure": "aa" * 32, "report_data": "bb"},
        {"measure": ["aa" * 32]},
        (33, 97, 36),
        "contraindicated",
    ),
    # the other platforms' claims do not satisfy another TEE's rules
    ("snp-claims-as-tdx", "tdx", SNP, TDX_RVS | SNP_RVS, (33, 97, 36), "contraindicated"),
]


@pytest.mark.parametrize(("tee", "claims", "rvs", "want", "status"), [r[1:] for r in CPU_ROWS],
                         ids=[r[0] for r in CPU_ROWS])  # fmt: skip
async def test_default_cpu_policy_as_trustee(
    tee: str, claims: dict[str, Any], rvs: dict[str, Any], want: Vec, status: str
) -> None:
    annotated = annotate(tee, claims, init_data_claims=None, runtime_data_claims={"nonce": "n"})
    _check(await _vector("cpu", annotated, rvs), want, status)


SAMPLE_RVS = {"launch_digest": ["abcde"], "svn": ["1"], "major_version": 1, "minimum_minor_version": 4}
SAMPLE_ROWS: list[tuple[str, dict[str, Any], Vec, str]] = [
    # cpu:65-74 executables (launch_digest), :80-86 hardware (svn, major_version,
    # minimum_minor_version), :95-99 configuration (debug false, no reference value)
    ("no-rvs", {}, (33, 97, 2), "contraindicated"),
    ("all-rvs", SAMPLE_RVS, (3, 2, 2), "affirming"),
    ("svn-only", {"svn": ["1"]}, (33, 97, 2), "contraindicated"),
    ("minor-too-new", {**SAMPLE_RVS, "minimum_minor_version": 5}, (3, 97, 2), "contraindicated"),
    ("major-differs", {**SAMPLE_RVS, "major_version": 2}, (3, 97, 2), "contraindicated"),
    ("launch-digest-unknown", {**SAMPLE_RVS, "launch_digest": ["x"]}, (33, 2, 2), "warning"),
]


@pytest.mark.parametrize(
    ("rvs", "want", "status"), [r[1:] for r in SAMPLE_ROWS], ids=[r[0] for r in SAMPLE_ROWS]
)
async def test_default_cpu_policy_sample_through_the_verifier(
    rvs: dict[str, Any], want: Vec, status: str
) -> None:
    from datetime import UTC, datetime

    rd = b"\x07" * 48
    claims = SampleVerifier().verify(
        {"svn": "1", "report_data": base64.b64encode(rd).decode()},
        expected_report_data=rd,
        expected_init_data_hash=b"\x01" * 32,
        now=datetime.now(UTC),
    )
    annotated = annotate("sample", claims, init_data_claims={"k": "v"}, runtime_data_claims={"nonce": "n"})
    _check(await _vector("cpu", annotated, rvs), want, status)


# --- Azure vTPM: our verifiers on trustee's recorded evidence ------------------------------------


def _azure_claims(tee: str) -> dict[str, Any]:
    from tests.attestation.azure._data import AT, SNP_V2_RD, load
    from tests.attestation.azure._data import SNP as SNP_DIR
    from tests.attestation.azure._data import TDX as TDX_DIR

    if tee == "az-snp-vtpm":
        from attestation.azure.kbs import AzSnpVtpmVerifier

        return AzSnpVtpmVerifier().verify(
            load(SNP_DIR / "evidence-v2.json"),
            expected_report_data=SNP_V2_RD,
            expected_init_data_hash=None,
            now=AT,
        )
    from attestation.azure.kbs import AzTdxVtpmVerifier

    return AzTdxVtpmVerifier().verify(
        load(TDX_DIR / "evidence-v1.json"),
        expected_report_data=b"challenge",
        expected_init_data_hash=None,
        now=AT,
    )


def _az_snp_rvs(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "measurement": [c["measurement"]],
        "snp_pcr11": [c["tpm"]["pcr11"]],
        "tcb_bootloader": [c["reported_tcb_bootloader"]],
        "tcb_microcode": [c["reported_tcb_microcode"]],
        "tcb_snp": [c["reported_tcb_snp"]],
        "tcb_tee": [c["reported_tcb_tee"]],
        "smt_enabled": [c["platform_smt_enabled"]],
        "tsme_enabled": [c["platform_tsme_enabled"]],
        "abi_major": [c["policy_abi_major"]],
        "abi_minor": [c["policy_abi_minor"]],
        "single_socket": [c["policy_single_socket"]],
        "smt_allowed": [c["policy_smt_allowed"]],
    }


def _az_tdx_rvs(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "tdx_pcr11": [c["tpm"]["pcr11"]],
        "mr_td": [c["quote"]["body"]["mr_td"]],
        "xfam": [c["quote"]["body"]["xfam"]],
    }


async def test_default_cpu_policy_az_snp_vtpm_recorded() -> None:
    claims = _azure_claims("az-snp-vtpm")
    rvs = _az_snp_rvs(claims)
    annotated = annotate("az-snp-vtpm", claims, init_data_claims=None, runtime_data_claims=None)
    # cpu:242-247 executables (measurement, snp_pcr11), :249-257 hardware (tcb_*), :263-272 configuration
    _check(await _vector("cpu", annotated, {}), (33, 97, 36), "contraindicated")
    _check(await _vector("cpu", annotated, rvs), (3, 2, 2), "affirming")
    _check(await _vector("cpu", annotated, {**rvs, "snp_pcr11": ["ff" * 32]}), (33, 2, 2), "warning")
    _check(await _vector("cpu", annotated, {**rvs, "tcb_microcode": [0]}), (3, 97, 2), "contraindicated")
    # SNP's own names (snp_launch_measurement, snp_bootloader, ...) do not apply to az-snp-vtpm
    _check(await _vector("cpu", annotated, SNP_RVS), (33, 97, 36), "contraindicated")


async def test_default_cpu_policy_az_tdx_vtpm_recorded() -> None:
    claims = _azure_claims("az-tdx-vtpm")
    rvs = _az_tdx_rvs(claims)
    annotated = annotate("az-tdx-vtpm", claims, init_data_claims=None, runtime_data_claims=None)
    # cpu:275-279 executables (tdx_pcr11), :281-298 hardware (also tcb_status UpToDate), :300-304 xfam.
    # Verified offline (no collateral) the claims carry tcb_status null: hardware stays 97.
    assert claims["tcb_status"] is None
    _check(await _vector("cpu", annotated, {}), (33, 97, 36), "contraindicated")
    _check(await _vector("cpu", annotated, rvs), (3, 97, 2), "contraindicated")
    uptodate = annotate(
        "az-tdx-vtpm", {**claims, "tcb_status": "UpToDate"}, init_data_claims=None, runtime_data_claims=None
    )
    _check(await _vector("cpu", uptodate, rvs), (3, 2, 2), "affirming")


# --- devices -------------------------------------------------------------------------------------

DEVICE_ROWS: list[tuple[str, str, str, dict[str, Any], dict[str, Any], Vec, str]] = [
    # (case, class, tee, claims, reference values, vector, status)
    # gpu:37-48 hardware, :50-55 configuration 2, :57-60 else 3, :62-79 executables
    (
        "nras-gpu-all-rvs",
        "gpu",
        "nvidia",
        NRAS_GPU,
        {"allowed_vbios_versions": ["96.00.9F.00.04"], "allowed_driver_versions": ["550.90.07"]},
        (3, 2, 2),
        "affirming",
    ),
    ("nras-gpu-no-rvs", "gpu", "nvidia", NRAS_GPU, {}, (3, 2, 3), "affirming"),
    ("nras-gpu-debug", "gpu", "nvidia", {**NRAS_GPU, "dbgstat": "enabled"}, {}, (3, 2, 36), "warning"),
    (
        "nras-gpu-ocsp-revoked",
        "gpu",
        "nvidia",
        {
            **NRAS_GPU,
            "x-nvidia-gpu-attestation-report-cert-chain": {
                "x-nvidia-cert-ocsp-status": "revoked",
                "x-nvidia-cert-status": "valid",
            },
        },
        {},
        (3, 97, 3),
        "contraindicated",
    ),
    ("nras-gpu-rim-mismatch", "gpu", "nvidia", {**NRAS_GPU, "measres": "fail"}, {}, (33, 2, 3), "warning"),
    # a locally verified GPU (our verifier, trustee's Local mode): none of the NRAS claims -> defaults gpu:5-9
    (
        "local-gpu",
        "gpu",
        "nvidia",
        LOCAL_GPU,
        {"allowed_vbios_versions": ["96.00.9F.00.04"], "allowed_driver_versions": ["550.90.07"]},
        (33, 97, 36),
        "contraindicated",
    ),
    # gpu:21-23 reads data.reference.device_svn, which trustee never provides: never 2
    (
        "sampledevice",
        "gpu",
        "sampledevice",
        {"svn": "2", "report_data": "aa"},
        {"device_svn": ["2"]},
        (33, 97, 36),
        "contraindicated",
    ),
    # switch:37-48 hardware, :50-54 configuration 2, :56-59 else 3, :61-72 executables
    (
        "nras-switch-all-rvs",
        "switch",
        "nvidia",
        NRAS_SWITCH,
        {"allowed_switch_bios_versions": ["96.10.6D.00.01"]},
        (3, 2, 2),
        "affirming",
    ),
    ("nras-switch-no-rvs", "switch", "nvidia", NRAS_SWITCH, {}, (3, 2, 3), "affirming"),
    # GPU claims under the switch policy satisfy nothing but the secure-boot configuration
    ("nras-gpu-as-switch", "switch", "nvidia", NRAS_GPU, {}, (33, 97, 3), "contraindicated"),
    # ppcie:5-14 — a ppcie submod exists only for a valid topology: configuration 2, nothing else
    ("ppcie", "ppcie", "nvidia", {"switch_count": 4, "gpu_count": 8}, {}, (0, 0, 2), "affirming"),
]


@pytest.mark.parametrize(("cls", "tee", "claims", "rvs", "want", "status"), [r[1:] for r in DEVICE_ROWS],
                         ids=[r[0] for r in DEVICE_ROWS])  # fmt: skip
async def test_default_device_policies_as_trustee(
    cls: str, tee: str, claims: dict[str, Any], rvs: dict[str, Any], want: Vec, status: str
) -> None:
    annotated = annotate(tee, claims, init_data_claims=None, runtime_data_claims=None)
    _check(await _vector(cls, annotated, rvs), want, status)


# --- extensions, annotation, serialisation -------------------------------------------------------


async def test_cpu_policy_identifiers_extension() -> None:
    """cpu:355-390: ear.trustee.identifiers from init_data_claims.agent_policy_claims."""
    pol = AttestationPolicies(MemoryStore())
    containers = [
        {
            "OCI": {
                "Annotations": {"io.kubernetes.cri.image-name": "pause"},
                "Process": {"User": {"UID": 65535}},
            }
        },
        {"OCI": {"Annotations": {"io.kubernetes.cri.image-name": "nginx"}, "Process": {"User": {"UID": 0}}}},
        {"OCI": {"Annotations": {}}},
    ]
    annotated = annotate(
        "snp",
        SNP,
        init_data_claims={"agent_policy_claims": {"containers": containers}},
        runtime_data_claims=None,
    )
    res = await pol.appraise("cpu", annotated, {})
    assert res.extensions == {
        "ear.trustee.identifiers": {
            "validated": {"container_images": ["pause", "nginx"], "container_uids": [65535, 0]}
        }
    }
    res = await pol.appraise("cpu", annotate("snp", SNP, init_data_claims=None, runtime_data_claims=None), {})
    assert res.extensions == {"ear.trustee.identifiers": {"validated": {}}}


def test_annotate_moves_bound_claims_to_the_top_level() -> None:
    """trustee broker.rs transform_claims: init_data / report_data leave the TEE's claims; the
    request's init-data / runtime-data claims appear only beside a claim the verifier bound."""
    rt = {"nonce": "n", "tee-pubkey": {"kty": "EC"}}
    ae = annotate("snp", SNP, init_data_claims={"k": "v"}, runtime_data_claims=rt)
    assert ae["init_data"] == SNP["init_data"] and ae["init_data_claims"] == {"k": "v"}
    assert ae["report_data"] == SNP["report_data"] and ae["runtime_data_claims"] == rt
    assert "init_data" not in ae["snp"] and "report_data" not in ae["snp"]
    assert ae["snp"]["measurement"] == SNP["measurement"]
    # a verifier that binds neither (trustee's NVIDIA verifiers): only the device's claims
    assert annotate("nvidia", LOCAL_GPU, init_data_claims={"k": "v"}, runtime_data_claims=rt) == {
        "nvidia": LOCAL_GPU
    }
    # digest-only init-data: init_data_claims is null, as trustee's Value::Null
    assert annotate("tdx", TDX, init_data_claims=None, runtime_data_claims=None)["init_data_claims"] is None
    with pytest.raises(AnnotationError):
        annotate("sample", {"report_data": 5}, init_data_claims=None, runtime_data_claims=None)


async def test_policy_trust_vector_only_set_claims_and_names_checked() -> None:
    """rust-ear serialises only the claims the policy set; an unknown claim name fails the
    appraisal; no trust_claims at all gives every claim 0 (broker.rs issue())."""
    from kbs.errors import PolicyEngineError

    store = MemoryStore()
    pol = AttestationPolicies(store)
    await pol.set("default_cpu", b'package policy\nimport rego.v1\ntrust_claims := {"hardware": 2}\n')
    res = await pol.appraise("cpu", {"sample": {}}, {})
    body = Appraisal(res.trust_vector, {}).to_json()
    assert body["ear.trustworthiness-vector"] == {"hardware": 2} and body["ear.status"] == "affirming"
    await pol.set("default_cpu", b'package policy\nimport rego.v1\ntrust_claims := {"firmware": 2}\n')
    with pytest.raises(PolicyEngineError):
        await pol.appraise("cpu", {"sample": {}}, {})
    await pol.set("default_cpu", b"package policy\nimport rego.v1\nx := 1\n")
    res = await pol.appraise("cpu", {"sample": {}}, {})
    assert dict(res.trust_vector) == dict.fromkeys(TRUST_CLAIMS, 0)
    assert Appraisal(res.trust_vector, {}).to_json()["ear.status"] == "none"
    # no rule of its own in package policy: nothing set, every claim 0
    await pol.set("default_cpu", b'package other\nimport rego.v1\ntrust_claims := {"hardware": 2}\n')
    res = await pol.appraise("cpu", {"sample": {}}, {})
    assert dict(res.trust_vector) == dict.fromkeys(TRUST_CLAIMS, 0)
    # extensions without trust_claims: every claim 0, the extension kept
    await pol.set(
        "default_cpu", b'package policy\nimport rego.v1\nextensions := [{"name": "e", "value": 1}]\n'
    )
    res = await pol.appraise("cpu", {"sample": {}}, {})
    assert dict(res.trust_vector) == dict.fromkeys(TRUST_CLAIMS, 0) and res.extensions == {"e": 1}
