# Resource policy for the sample TEE (development): release secrets only to a
# guest whose sample evidence says svn >= 1, not debug, and the expected launch
# digest, and only from the "default" repository.
#
# input: the EAR token's claims (docs/operator/claims.md)
# data:  {"plugin": "resource", "resource-path": [repo, type, tag], "query": {...}}
package policy

import rego.v1

default allow := false

sample := input.submods.cpu0["ear.veraison.annotated-evidence"].sample

allow if {
	data.plugin == "resource"
	data["resource-path"][0] == "default"
	to_number(sample.svn) >= 1
	sample.debug == false
	sample.launch_digest == "abcde"
}
