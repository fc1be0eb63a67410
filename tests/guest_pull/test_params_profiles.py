"""Kernel parameters (one parser) and runtime-class profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_pull.errors import KernelParamError, ProfileError
from guest_pull.kernel_params import KernelParams, parse_kernel_params, read_kernel_params
from guest_pull.profiles import PROFILES, profile


def test_defaults() -> None:
    p = parse_kernel_params("console=ttyS0 quiet")
    assert p == KernelParams()
    assert p.image_pull_timeout == 1200 and p.cdh_api_timeout == 50 and p.launch_process_timeout == 6
    assert p.guest_components_level == 3 and p.secure_storage_integrity


def test_all_params() -> None:
    p = parse_kernel_params(
        "agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080 agent.image_registry_auth=kbs:///default/credential/test "
        "agent.enable_signature_verification=true agent.image_policy_file=kbs:///default/security-policy/test "
        "agent.guest_components_procs=confidential-data-hub agent.guest_components_rest_api=all "
        "agent.cdh_api_timeout=60 agent.image_pull_timeout=3600 agent.launch_process_timeout=15 "
        "agent.secure_storage_integrity=false agent.https_proxy=http://proxy:3128 agent.no_proxy=10.0.0.0/8 "
        'cdh.kbs_resources="a b" agent.debug_console agent.log=debug'
    )
    assert p.kbs_url() == "http://10.0.2.2:8080"
    assert p.image_registry_auth == "kbs:///default/credential/test"
    assert p.enable_signature_verification is True
    assert p.image_policy_file == "kbs:///default/security-policy/test"
    assert p.guest_components_procs == "confidential-data-hub" and p.guest_components_level == 2
    assert p.guest_components_rest_api == "all"
    assert (p.cdh_api_timeout, p.image_pull_timeout, p.launch_process_timeout) == (60, 3600, 15)
    assert p.secure_storage_integrity is False
    assert p.https_proxy == "http://proxy:3128" and p.no_proxy == "10.0.0.0/8"
    assert p.cdh_kbs_resources == "a b"
    assert p.unknown == ("agent.debug_console", "agent.log")


def test_later_occurrence_wins_and_kbc_forms() -> None:
    p = parse_kernel_params("agent.image_pull_timeout=10 agent.image_pull_timeout=20")
    assert p.image_pull_timeout == 20
    assert parse_kernel_params("agent.aa_kbc_params=offline_fs_kbc::null").kbs_url() is None


@pytest.mark.parametrize(
    ("cmdline", "needle"),
    [
        ("agent.image_pull_timeout=soon", "agent.image_pull_timeout"),
        ("agent.cdh_api_timeout=0", "agent.cdh_api_timeout"),
        ("agent.guest_components_procs=everything", "agent.guest_components_procs"),
        ("agent.guest_components_rest_api=x", "agent.guest_components_rest_api"),
        ("agent.enable_signature_verification=maybe", "agent.enable_signature_verification"),
        ('agent.x="unterminated', "kernel command line"),
    ],
)
def test_bad_params(cmdline: str, needle: str) -> None:
    with pytest.raises(KernelParamError) as ei:
        parse_kernel_params(cmdline)
    assert needle in str(ei.value)


def test_read_from_file(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("agent.image_pull_timeout=5\n")
    assert read_kernel_params(tmp_path / "cmdline").image_pull_timeout == 5
    with pytest.raises(KernelParamError):
        read_kernel_params(tmp_path / "missing")


def test_profiles() -> None:
    assert set(PROFILES) == {
        "kata-qemu-coco-dev",
        "kata-qemu-snp",
        "kata-qemu-tdx",
        "kata-qemu-nvidia-gpu-snp",
        "kata-qemu-nvidia-gpu-tdx",
    }
    dev = profile("kata-qemu-coco-dev")
    assert dev.primary_attester == "sample" and not dev.confidential_guest and dev.initdata_field is None
    assert (profile("kata-qemu-snp").initdata_field, profile("kata-qemu-snp").initdata_field_length) == (
        "HOSTDATA",
        32,
    )
    assert profile("kata-qemu-tdx").initdata_field_length == 48
    gpu = profile("kata-qemu-nvidia-gpu-tdx")
    assert gpu.additional_attesters == ("nvidia",) and gpu.launch_process_timeout == 15
    with pytest.raises(ProfileError, match="kata-qemu-sev"):
        profile("kata-qemu-sev")
