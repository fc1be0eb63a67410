package policy

import rego.v1

default allow := false

# trustee's default: release resources to any TEE except the sample attester.
allow if {
	data.plugin == "resource"
	not input.submods.cpu0["ear.veraison.annotated-evidence"].sample
}
