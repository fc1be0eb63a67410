package policy

import rego.v1

# Default PPCIe topology policy (id "default_ppcie"), as trustee v0.21.0's
# ear_default_policy_ppcie.rego: a ppcie submod exists only when a valid
# protected-PCIe topology was found, so configuration is 2 and nothing else
# is asserted (the GPUs and switches have their own submods).

default hardware := 0

default executables := 0

default configuration := 2

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
