package policy

import rego.v1

default allow := false

# Every attested device (submod) must be affirming, and there must be one.
allow if {
	count(input.submods) > 0
	every _, submod in input.submods {
		submod["ear.status"] == "affirming"
	}
}
