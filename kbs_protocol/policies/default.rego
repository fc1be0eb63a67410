package policy

import rego.v1

default allow := false

# The default resource policy: a resource is released only to a client whose
# CPU TEE was attested (a cpu0 submod), every attested part of which is
# affirming, and none of which is a development TEE (no signature exists on
# sample or sampledevice evidence, so they prove nothing).
allow if {
	data.plugin == "resource"
	input.submods.cpu0
	every _, submod in input.submods {
		submod["ear.status"] == "affirming"
	}
	not dev_evidence
}

dev_evidence if {
	some name, submod in input.submods
	some tee in ["sample", "sampledevice"]
	_ = submod["ear.veraison.annotated-evidence"][tee]
}
