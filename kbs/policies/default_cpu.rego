package policy

import rego.v1

# Default CPU appraisal (written for this KBS after trustee's
# ear_default_policy_cpu.rego): AR4SI trust claims from the verifier claims
# and the reference values. With no reference values every TEE comes out
# contraindicated.

default executables := 33

default hardware := 97

default configuration := 36

# sample TEE: reference values svn, launch_digest, major_version, minimum_minor_version
executables := 3 if {
	input.sample.launch_digest in query_reference_value("launch_digest")
}

hardware := 2 if {
	input.sample.svn in query_reference_value("svn")
}

configuration := 2 if {
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

# SEV-SNP
executables := 3 if {
	input.snp.measurement in query_reference_value("snp_launch_measurement")
}

hardware := 2 if {
	input.snp
	not input.snp.policy_debug_allowed
}

configuration := 2 if {
	input.snp.policy_debug_allowed == false
	input.snp.reported_tcb_snp >= query_reference_value("snp_min_tcb_snp")
}

# TDX
executables := 3 if {
	input.tdx.quote.body.mr_td in query_reference_value("mr_td")
}

hardware := 2 if {
	input.tdx.quote.header.tee_type == "81000000"
}

configuration := 2 if {
	input.tdx.td_attributes.debug == false
	input.tdx.quote.body.mr_config_id in query_reference_value("mr_config_id")
}

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}
