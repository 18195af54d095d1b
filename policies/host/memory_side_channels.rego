# Memory side channels (Firecracker production host setup: "Disable Kernel Samepage Merging",
# swap): KSM off (same-page merging leaks between VMs) and no swap (guest memory must not reach
# the disk, and swapping breaks the VMs' memory limits and latency).
package firefleet.host.memory_side_channels

import rego.v1

reported_posture := object.get(input, ["node", "facts", "posture"], null)

# The agent's posture facts; {} when it reported none (every control then fails).
default posture := {}

posture := reported_posture if reported

reported if is_object(reported_posture)

evidence(e) := e if reported

evidence(_) := "not reported" if not reported

default ksm_off := false

ksm_off if {
	reported
	object.get(posture, "ksm_enabled", null) == false
}

default swap_off := false

swap_off if {
	reported
	object.get(posture, "swap_total_kib", null) == 0
}

controls["ksm-off"] := {
	"name": "KSM disabled",
	"passed": ksm_off,
	"evidence": evidence({"ksm_enabled": object.get(posture, "ksm_enabled", null)}),
}

controls["swap-off"] := {
	"name": "Swap disabled",
	"passed": swap_off,
	"evidence": evidence({"swap_total_kib": object.get(posture, "swap_total_kib", null)}),
}

deny contains msg if {
	some id, c in controls
	not c.passed
	msg := sprintf("%v (%v) failed: %v", [c.name, id, json.marshal(c.evidence)])
}

test_good_host_passes if {
	count(deny) == 0 with input as {"node": {"facts": {"posture": {"ksm_enabled": false, "swap_total_kib": 0}}}}
}

test_ksm_on_fails if {
	deny == {"KSM disabled (ksm-off) failed: {\"ksm_enabled\":true}"} with input as {"node": {"facts": {"posture": {"ksm_enabled": true, "swap_total_kib": 0}}}}
}

test_unknown_fails if {
	count(deny) == 2 with input as {"node": {"facts": {"posture": {}}}}
}

test_swap_fails if {
	not swap_off with input as {"node": {"facts": {"posture": {"ksm_enabled": false, "swap_total_kib": 1024}}}}
}

test_not_reported_fails_all if {
	count(deny) == 2 with input as {"node": {"facts": {"posture": null}}}
}
