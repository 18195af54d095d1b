# GPUs only for allowed tenants: those named in gpu_tenants, or of a class in gpu_classes.
package firefleet.admission.gpu_tenants

import rego.v1

gpu_tenants := {"ml"}

gpu_classes := {"gpu"}

tenant_id := object.get(input, ["tenant", "id"], object.get(input, ["vm", "tenant"], ""))

tenant_class := object.get(input, ["tenant", "class"], "standard")

gpus := object.get(input, ["vm", "resources", "gpus"], 0)

allowed if tenant_id in gpu_tenants

allowed if tenant_class in gpu_classes

deny contains msg if {
	gpus > 0
	not allowed
	msg := sprintf(
		"resources.gpus %v: tenant %v (class %v) may not use GPUs",
		[gpus, json.marshal(tenant_id), tenant_class],
	)
}

test_no_gpu_passes if {
	count(deny) == 0 with input as {"vm": {"resources": {"vcpus": 1, "memory_mib": 256}}, "tenant": {"id": "acme"}}
}

test_gpu_for_listed_tenant if {
	count(deny) == 0 with input as {"vm": {"resources": {"gpus": 2}}, "tenant": {"id": "ml"}}
}

test_gpu_for_gpu_class if {
	count(deny) == 0 with input as {"vm": {"resources": {"gpus": 1}}, "tenant": {"id": "lab", "class": "gpu"}}
}

test_gpu_for_other_tenant_is_denied if {
	deny == {"resources.gpus 1: tenant \"acme\" (class standard) may not use GPUs"} with input as {
		"vm": {"resources": {"gpus": 1}},
		"tenant": {"id": "acme"},
	}
}
