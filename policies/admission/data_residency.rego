# Data residency: a tenant whose data must stay in some regions (input.tenant.regions) runs
# only VMs whose placement.allowed_regions is non-empty and within those regions.
package firefleet.admission.data_residency

import rego.v1

tenant_regions := {r | some r in object.get(input, ["tenant", "regions"], [])}

vm_regions := {r | some r in object.get(input, ["vm", "placement", "allowed_regions"], [])}

deny contains msg if {
	input.vm
	count(tenant_regions) > 0
	count(vm_regions) == 0
	msg := sprintf(
		"placement.allowed_regions is empty: the tenant's data must stay in %v",
		[concat(", ", sort(tenant_regions))],
	)
}

deny contains msg if {
	count(tenant_regions) > 0
	outside := vm_regions - tenant_regions
	count(outside) > 0
	msg := sprintf(
		"placement.allowed_regions has %v outside the tenant's regions %v",
		[concat(", ", sort(outside)), concat(", ", sort(tenant_regions))],
	)
}

test_no_residency_passes if {
	count(deny) == 0 with input as {"vm": {"placement": {}}, "tenant": {"id": "acme", "regions": []}}
}

test_within_regions_passes if {
	count(deny) == 0 with input as {
		"vm": {"placement": {"allowed_regions": ["eu-west"]}},
		"tenant": {"regions": ["eu-west", "eu-central"]},
	}
}

test_unconstrained_vm_is_denied if {
	deny == {"placement.allowed_regions is empty: the tenant's data must stay in eu-central, eu-west"} with input as {
		"vm": {"name": "web"},
		"tenant": {"regions": ["eu-west", "eu-central"]},
	}
}

test_outside_region_is_named if {
	deny == {"placement.allowed_regions has us-east outside the tenant's regions eu-west"} with input as {
		"vm": {"placement": {"allowed_regions": ["eu-west", "us-east"]}},
		"tenant": {"regions": ["eu-west"]},
	}
}
