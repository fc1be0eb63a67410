package policy

import rego.v1

default allow := false

allow if {
	data.plugin == "resource"
}
