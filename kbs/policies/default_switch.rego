package policy

import rego.v1

# Default NVSwitch appraisal policy (id "default_switch"), with the rules and
# names of trustee v0.21.0's ear_default_policy_switch.rego: like
# default_gpu over the NRAS switch claims ("x-nvidia-switch-*"); reference
# value allowed_switch_bios_versions.

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

hardware := 2 if {
	input.nvidia
	chain := input.nvidia["x-nvidia-switch-attestation-report-cert-chain"]
	chain["x-nvidia-cert-ocsp-status"] == "good"
	chain["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-switch-attestation-report-cert-chain-fwid-match"]
	input.nvidia["x-nvidia-switch-attestation-report-parsed"]
	input.nvidia["x-nvidia-switch-attestation-report-signature-verified"]
	input.nvidia["x-nvidia-switch-arch-check"]
}

configuration := 2 if {
	_secure_boot_no_debug
	input.nvidia["x-nvidia-switch-bios-version"] in query_reference_value("allowed_switch_bios_versions")
} else := 3 if {
	_secure_boot_no_debug
}

_secure_boot_no_debug if {
	input.nvidia.secboot
	input.nvidia.dbgstat == "disabled"
}

executables := 3 if {
	chain := input.nvidia["x-nvidia-switch-bios-rim-cert-chain"]
	chain["x-nvidia-cert-ocsp-status"] == "good"
	chain["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-switch-bios-rim-fetched"]
	input.nvidia["x-nvidia-switch-bios-rim-measurements-available"]
	input.nvidia["x-nvidia-switch-bios-rim-schema-validated"]
	input.nvidia["x-nvidia-switch-bios-rim-signature-verified"]
	input.nvidia["x-nvidia-switch-bios-rim-version-match"]
	input.nvidia.measres == "success"
}
