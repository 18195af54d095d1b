# Isolation required by tenant class. A tenant of class `restricted` runs only on hosts that
# pass the host posture policies (placement.compliant_host) and that are dedicated to it: the
# VM selects nodes labelled `dedicated=<tenant id>`, and the scheduler lets no other tenant
# onto such a node, so a restricted tenant never shares a host (nor its CPU caches) with
# another tenant.
package firefleet.admission.tenant_isolation

import rego.v1

isolated_classes := {"restricted"}

tenant_id := object.get(input, ["tenant", "id"], object.get(input, ["vm", "tenant"], ""))

tenant_class := object.get(input, ["tenant", "class"], "standard")

restricted if tenant_class in isolated_classes

placement := object.get(input, ["vm", "placement"], {})

deny contains msg if {
	restricted
	input.vm
	not object.get(placement, "compliant_host", false) == true
	msg := sprintf("placement.compliant_host must be true for tenants of class %v", [tenant_class])
}

deny contains msg if {
	restricted
	input.vm
	dedicated := object.get(placement, ["node_selector", "dedicated"], null)
	dedicated != tenant_id
	msg := sprintf(
		"placement.node_selector.dedicated must be %v (hosts dedicated to the tenant) for tenants of class %v, got %v",
		[json.marshal(tenant_id), tenant_class, json.marshal(dedicated)],
	)
}

test_standard_tenant_passes if {
	count(deny) == 0 with input as {"vm": {"tenant": "acme"}, "tenant": {"id": "acme", "class": "standard"}}
}

test_missing_class_is_standard if {
	count(deny) == 0 with input as {"vm": {"tenant": "acme"}, "tenant": {"id": "acme"}}
}

test_restricted_isolated_passes if {
	count(deny) == 0 with input as {
		"vm": {"tenant": "bank", "placement": {"compliant_host": true, "node_selector": {"dedicated": "bank"}}},
		"tenant": {"id": "bank", "class": "restricted"},
	}
}

test_restricted_without_anything_is_denied if {
	count(deny) == 2 with input as {"vm": {"tenant": "bank"}, "tenant": {"id": "bank", "class": "restricted"}}
}

test_restricted_on_other_tenants_hosts_is_denied if {
	deny == {"placement.node_selector.dedicated must be \"bank\" (hosts dedicated to the tenant) for tenants of class restricted, got \"other\""} with input as {
		"vm": {"tenant": "bank", "placement": {"compliant_host": true, "node_selector": {"dedicated": "other"}}},
		"tenant": {"id": "bank", "class": "restricted"},
	}
}

test_restricted_needs_compliant_host if {
	deny == {"placement.compliant_host must be true for tenants of class restricted"} with input as {
		"vm": {"tenant": "bank", "placement": {"node_selector": {"dedicated": "bank"}}},
		"tenant": {"id": "bank", "class": "restricted"},
	}
}
