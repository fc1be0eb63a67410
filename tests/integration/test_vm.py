"""Issue 12: a real guest. Boots the coco-dev VM under QEMU (TCG) and pulls
onto LUKS2 + dm-integrity inside it, through AA, CDH and the reference KBS
(see tests/integration/vm_harness.py for the scenario). Nothing is mocked:
the sample attester is what the coco-dev runtime class uses on a VM without
TEE hardware. The guest also has a swtpm vTPM (tpm-tis): a second AA, started
as the agent would on a VM with a TPM, attests with the real ``tpm`` attester
(a quote by an AK provisioned in the vTPM, which the KBS is configured to trust,
and the firmware's event log, replayed by the KBS). Skips only where QEMU/the
guest build cannot run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.integration.vm_harness import VmScenarioError, run_scenario, skip_reason

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(900)]


def test_guest_pull_onto_luks2_in_vm(tmp_path: Path) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(f"cannot boot the test VM here: {reason}")
    lines: list[str] = []
    try:
        summary = run_scenario(tmp_path, say=lines.append, timeout=600)
    except VmScenarioError as exc:
        pytest.fail(f"{exc}\n--- harness and guest console (tail) ---\n" + "\n".join(lines[-80:]))
    console = "\n".join(lines)
    # The image work dir sits on a dm-crypt mapping with integrity, as cryptsetup reports it.
    assert summary["mount_point"] == "/run/kata-containers/image/"
    assert "aes-xts-plain64" in summary["cipher"]
    assert "hmac(sha256)" in summary["integrity"]
    assert f"mount: /dev/mapper/{summary['mapper']} /run/kata-containers/image" in console
    # The pulled file is the one pushed in this run (the nonce makes it unique).
    assert summary["file"] == "etc/coco-vm.txt"
    assert summary["file_text"].startswith("pulled inside the coco-dev guest onto LUKS2 (run ")
    assert summary["file_sha256"] == hashlib.sha256(summary["file_text"].encode()).hexdigest()
    assert summary["manifest_digest"].startswith("sha256:")
    # The guest ran the pulled bundle with runc, unchanged, and captured its output: the
    # pulled file's text, from inside the container's own PID and UTS namespaces.
    assert summary["container_exit"] == 0
    assert summary["container_stdout"] == (
        f"hello from a confidential container\n{summary['file_text']}pid 1 on coco\n"
    )
    assert "guest: runc: container " in console
    # A signed image whose bundle runc refuses (missing entrypoint) is a failed pull, released.
    assert "runc create" in summary["runc_refused_error"]
    # ... through the Kata glue: a host-side Storage{driver=image_guest_pull} handled in the guest.
    assert summary["first_pull_via"] == "agent Storage"
    # The second pull of the same image is served from the layer store.
    assert summary["new_layers_second_pull"] == 0 and summary["store_layers_after_first"] >= 2
    # The image was signed (gnupg, skopeo) and its layers encrypted to a KBS key.
    assert summary["encrypted_layers"] >= 1
    assert "policy accepted" in summary["signature"]
    assert summary["signer_fingerprint"][-16:].lower() in summary["signature"].lower()
    # Negatives: a valid signature replayed onto a tampered manifest, a KBS that refuses the
    # layer key, and one that refuses the registry credentials: each pull fails, nothing stays.
    tampered = summary["tampered_error"].lower()
    assert "signature" in tampered or "digest" in tampered, tampered
    assert "unwrap" in summary["key_denied_error"].lower(), summary["key_denied_error"]
    assert "/kbs/v0/resource/default/image-kek/denied" in summary["kbs_refused"]
    assert "policydeny" in summary["kbs_denied_error"].lower(), summary["kbs_denied_error"]
    assert summary["boot_seconds"] > 0
    # The coco-dev AA attested with the sample TEE ...
    assert summary["attestation_tee"] == "sample"
    # ... and the AA that found the guest's vTPM with the tpm attester: the KBS verified the quote
    # (nonce, signature by the AK provisioned on the host, all 24 SHA-256 PCRs, the firmware's
    # event log replayed to them) and put tpm claims in the token.
    tpm = summary["tpm"]
    assert tpm["tee"] == "tpm" and tpm["device"] == "/dev/tpmrm0"
    assert tpm["ak_trust"] == "configured" and tpm["ak_matches_provisioned"]
    assert tpm["pcrs_quoted"] == list(range(24))
    assert 0 in tpm["pcrs_measured"] and len(tpm["pcr00"]) == 64
    assert tpm["event_log_events"] > 0
    # The AA bound its init-data: the KBS saw its SHA-256 and PCR 8 holds one extend with it.
    assert len(tpm["init_data"]) == 64
    assert tpm["pcr08"] == hashlib.sha256(bytes(32) + bytes.fromhex(tpm["init_data"])).hexdigest()
    assert "TPM attestation: tpm token, AK trust configured" in console
    # A quote by an AK the KBS does not trust (another key in the same vTPM) gets no token.
    assert tpm["untrusted_ak_error"]
    assert "neither configured nor certified" in tpm["kbs_untrusted_ak_log"]
