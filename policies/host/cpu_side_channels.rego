# CPU side channels (Firecracker production host setup: "Disable Simultaneous Multithreading",
# "Check for host CPU vulnerabilities" and their mitigations): SMT off, and no CPU
# vulnerability the kernel reports as `Vulnerable`.
package firefleet.host.cpu_side_channels

import rego.v1

reported_posture := object.get(input, ["node", "facts", "posture"], null)

# The agent's posture facts; {} when it reported none (every control then fails).
default posture := {}

posture := reported_posture if reported

reported if is_object(reported_posture)

evidence(e) := e if reported

evidence(_) := "not reported" if not reported

smt_off_controls := {"off", "forceoff", "notsupported", "notimplemented"}

default smt_off := false

smt_off if {
	reported
	object.get(posture, "smt_control", null) in smt_off_controls
}

smt_off if {
	reported
	object.get(posture, "smt_active", null) == false
}

default no_vulnerable := false

no_vulnerable if {
	reported
	count(object.get(posture, "vulnerable", [])) == 0
}

controls["smt-off"] := {
	"name": "SMT disabled",
	"passed": smt_off,
	"evidence": evidence({
		"smt_control": object.get(posture, "smt_control", null),
		"smt_active": object.get(posture, "smt_active", null),
	}),
}

controls["no-vulnerable-cpu"] := {
	"name": "No CPU vulnerability reported Vulnerable",
	"passed": no_vulnerable,
	"evidence": evidence(object.get(posture, "vulnerable", [])),
}

deny contains msg if {
	some id, c in controls
	not c.passed
	msg := sprintf("%v (%v) failed: %v", [c.name, id, json.marshal(c.evidence)])
}

good := {"smt_control": "on", "smt_active": false, "vulnerable": [], "vulnerabilities": {"meltdown": "Not affected"}}

test_good_host_passes if {
	count(deny) == 0 with input as {"node": {"facts": {"posture": good}}}
}

test_smt_control_off_passes if {
	smt_off with input as {"node": {"facts": {"posture": {"smt_control": "forceoff"}}}}
	smt_off with input as {"node": {"facts": {"posture": {"smt_control": "notsupported"}}}}
}

test_smt_on_fails if {
	not smt_off with input as {"node": {"facts": {"posture": {"smt_control": "on", "smt_active": true}}}}
	not smt_off with input as {"node": {"facts": {"posture": {"smt_control": null, "smt_active": null}}}}
}

test_vulnerable_is_evidence if {
	c := controls["no-vulnerable-cpu"] with input as {"node": {"facts": {"posture": object.union(good, {"vulnerable": ["mds"]})}}}
	c.passed == false
	c.evidence == ["mds"]
}

test_not_reported_fails_all if {
	count(deny) == 2 with input as {"node": {"facts": {"posture": null}}}
}
