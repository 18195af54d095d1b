# VMM isolation (Firecracker production host setup: "Jailer", "Seccomp", "cgroups"): every VMM
# runs in its own sandbox (the jailer's, or FireFleet's: uid per VM, mount namespace, chroot),
# under a seccomp filter, in a cgroup with CPU and memory limits.
package firefleet.host.vmm_isolation

import rego.v1

reported_posture := object.get(input, ["node", "facts", "posture"], null)

# The agent's posture facts; {} when it reported none (every control then fails).
default posture := {}

posture := reported_posture if reported

reported_isolation := object.get(input, ["node", "facts", "isolation"], null)

# What the agent says about its VMM protections (IsolationFacts), shown as evidence.
default isolation := {}

isolation := reported_isolation if is_object(reported_isolation)

reported if is_object(reported_posture)

detail(field) := object.get(isolation, field, null)

evidence(e) := e if reported

evidence(_) := "not reported" if not reported

default sandboxed := false

sandboxed if object.get(posture, "vmm_sandboxed", false) == true

default seccomp := false

seccomp if object.get(posture, "seccomp", false) == true

default cgroup_limits := false

cgroup_limits if object.get(posture, "cgroup_limits", false) == true

controls["vmm-sandbox"] := {
	"name": "VMM sandboxed (jailer or equivalent)",
	"passed": sandboxed,
	"evidence": evidence({"vmm_sandboxed": object.get(posture, "vmm_sandboxed", null), "jail": detail("jail"), "uid_per_vm": detail("uid_per_vm")}),
}

controls["seccomp"] := {
	"name": "Seccomp filter on every VMM",
	"passed": seccomp,
	"evidence": evidence({"seccomp": object.get(posture, "seccomp", null), "filter": detail("seccomp")}),
}

controls["cgroup-limits"] := {
	"name": "VMM cgroup CPU and memory limits",
	"passed": cgroup_limits,
	"evidence": evidence({
		"cgroup_limits": object.get(posture, "cgroup_limits", null),
		"cgroup": detail("cgroup"),
		"cpu_limit": detail("cpu_limit"),
		"memory_limit": detail("memory_limit"),
	}),
}

deny contains msg if {
	some id, c in controls
	not c.passed
	msg := sprintf("%v (%v) failed: %v", [c.name, id, json.marshal(c.evidence)])
}

good := {
	"vmm_sandboxed": true, "seccomp": true, "cgroup_limits": true,
	"smt_control": "off", "smt_active": false, "ksm_enabled": false, "swap_total_kib": 0,
	"vulnerabilities": {}, "vulnerable": [], "metadata_egress_blocked": true,
}

test_good_host_passes if {
	count(deny) == 0 with input as {"node": {"id": "n1", "facts": {"posture": good}}}
}

test_each_control_fails_alone if {
	every field in ["vmm_sandboxed", "seccomp", "cgroup_limits"] {
		count(deny) == 1 with input as {"node": {"facts": {"posture": object.union(good, {field: false})}}}
	}
}

test_not_reported_fails_all if {
	count(deny) == 3 with input as {"node": {"id": "n1", "facts": {"posture": null}}}
	controls["seccomp"].evidence == "not reported" with input as {"node": {"facts": {}}}
}
