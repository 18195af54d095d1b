# Resource limits per VM. Tighten them by applying an edited copy of this file (same package)
# in place of the built-in one.
package firefleet.admission.resource_limits

import rego.v1

min_vcpus := 1

max_vcpus := 8

min_memory_mib := 128

max_memory_mib := 16384

resources := object.get(input, ["vm", "resources"], {})

deny contains msg if {
	v := resources.vcpus
	v < min_vcpus
	msg := sprintf("resources.vcpus %v is below the minimum %v", [v, min_vcpus])
}

deny contains msg if {
	v := resources.vcpus
	v > max_vcpus
	msg := sprintf("resources.vcpus %v is above the limit %v", [v, max_vcpus])
}

deny contains msg if {
	m := resources.memory_mib
	m < min_memory_mib
	msg := sprintf("resources.memory_mib %v is below the minimum %v", [m, min_memory_mib])
}

deny contains msg if {
	m := resources.memory_mib
	m > max_memory_mib
	msg := sprintf("resources.memory_mib %v is above the limit %v", [m, max_memory_mib])
}

test_typical_vm_passes if {
	count(deny) == 0 with input as {"vm": {"resources": {"vcpus": 1, "memory_mib": 256}}}
}

test_bounds_are_inclusive if {
	count(deny) == 0 with input as {"vm": {"resources": {"vcpus": 8, "memory_mib": 16384}}}
	count(deny) == 0 with input as {"vm": {"resources": {"vcpus": 1, "memory_mib": 128}}}
}

test_too_many_vcpus if {
	deny == {"resources.vcpus 9 is above the limit 8"} with input as {"vm": {"resources": {"vcpus": 9, "memory_mib": 256}}}
}

test_too_much_memory if {
	deny == {"resources.memory_mib 65536 is above the limit 16384"} with input as {"vm": {"resources": {"vcpus": 1, "memory_mib": 65536}}}
}

test_too_little if {
	count(deny) == 2 with input as {"vm": {"resources": {"vcpus": 0, "memory_mib": 64}}}
}
