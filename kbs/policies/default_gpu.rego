package policy

import rego.v1

# Default GPU / device appraisal. sampledevice: reference value device_svn.
# nvidia: the verifier checked certificates, the nonce and the RIM measurements.

default executables := 33

default hardware := 97

default configuration := 36

hardware := 2 if {
	input.sampledevice.svn in query_reference_value("device_svn")
}

executables := 3 if {
	input.sampledevice.svn in query_reference_value("device_svn")
}

configuration := 2 if {
	input.sampledevice
}

hardware := 2 if {
	input.nvidia.nonce_checked == true
}

executables := 3 if {
	input.nvidia.measurements_match == true
}

configuration := 2 if {
	input.nvidia.driver_version in query_reference_value("nvidia_driver_version")
}

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}
