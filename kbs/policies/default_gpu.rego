package policy

import rego.v1

# Default GPU appraisal policy (id "default_gpu"), with the rules, claim
# names and reference-value names of trustee v0.21.0's
# ear_default_policy_gpu.rego.
#
# The nvidia rules read the claims NVIDIA's remote attestation service (NRAS)
# returns ("x-nvidia-gpu-*", secboot, dbgstat, measres). This KBS verifies
# GPUs locally, as trustee's local NVIDIA verifier does, and neither emits
# those claims, so a locally verified GPU is contraindicated under this
# policy in both; upload a "default_gpu" policy over the local claims
# (arch, nonce_checked, measurements_match, driver_version, ...) to appraise it.
# sampledevice: trustee reads data.reference.device_svn, which its engine
# never provides (no policy data), so that rule never holds there either.

default hardware := 97

default executables := 33

default configuration := 36

default file_system := 0

default instance_identity := 0

default runtime_opaque := 0

default storage_opaque := 0

default sourced_data := 0

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
	"file-system": file_system,
	"instance-identity": instance_identity,
	"runtime-opaque": runtime_opaque,
	"storage-opaque": storage_opaque,
	"sourced-data": sourced_data,
}

hardware := 2 if {
	input.sampledevice.svn in data.reference.device_svn
}

# reference values: allowed_vbios_versions, allowed_driver_versions

hardware := 2 if {
	input.nvidia
	chain := input.nvidia["x-nvidia-gpu-attestation-report-cert-chain"]
	chain["x-nvidia-cert-ocsp-status"] == "good"
	chain["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"]
	input.nvidia["x-nvidia-gpu-attestation-report-parsed"]
	input.nvidia["x-nvidia-gpu-attestation-report-signature-verified"]
	input.nvidia["x-nvidia-gpu-arch-check"]
}

configuration := 2 if {
	_secure_boot_no_debug
	input.nvidia["x-nvidia-gpu-vbios-version"] in query_reference_value("allowed_vbios_versions")
	input.nvidia["x-nvidia-gpu-driver-version"] in query_reference_value("allowed_driver_versions")
} else := 3 if {
	_secure_boot_no_debug
}

_secure_boot_no_debug if {
	input.nvidia.secboot
	input.nvidia.dbgstat == "disabled"
}

executables := 3 if {
	chain := input.nvidia["x-nvidia-gpu-vbios-rim-cert-chain"]
	chain["x-nvidia-cert-ocsp-status"] == "good"
	chain["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-gpu-driver-rim-fetched"]
	input.nvidia["x-nvidia-gpu-driver-rim-measurements-available"]
	input.nvidia["x-nvidia-gpu-driver-rim-schema-validated"]
	input.nvidia["x-nvidia-gpu-driver-rim-signature-verified"]
	input.nvidia["x-nvidia-gpu-driver-rim-version-match"]
	input.nvidia["x-nvidia-gpu-vbios-rim-fetched"]
	input.nvidia["x-nvidia-gpu-vbios-rim-measurements-available"]
	input.nvidia["x-nvidia-gpu-vbios-rim-schema-validated"]
	input.nvidia["x-nvidia-gpu-vbios-rim-signature-verified"]
	input.nvidia["x-nvidia-gpu-vbios-rim-version-match"]
	input.nvidia.measres == "success"
}
