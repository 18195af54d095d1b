# Cloud metadata address blocked: guests cannot reach 169.254.169.254 (the host's cloud
# credentials and instance data).
package firefleet.host.metadata_egress

import rego.v1

reported_posture := object.get(input, ["node", "facts", "posture"], null)

# The agent's posture facts; {} when it reported none (every control then fails).
default posture := {}

posture := reported_posture if reported

reported if is_object(reported_posture)

default blocked := false

blocked if {
	reported
	object.get(posture, "metadata_egress_blocked", false) == true
}

controls["metadata-egress-blocked"] := {
	"name": "Guest egress to the metadata address blocked",
	"passed": blocked,
	"evidence": evidence,
}

evidence := {"metadata_egress_blocked": object.get(posture, "metadata_egress_blocked", null)} if reported

evidence := "not reported" if not reported

deny contains msg if {
	some id, c in controls
	not c.passed
	msg := sprintf("%v (%v) failed: %v", [c.name, id, json.marshal(c.evidence)])
}

test_blocked_passes if {
	count(deny) == 0 with input as {"node": {"facts": {"posture": {"metadata_egress_blocked": true}}}}
}

test_open_fails if {
	count(deny) == 1 with input as {"node": {"facts": {"posture": {"metadata_egress_blocked": false}}}}
}

test_not_reported_fails if {
	controls["metadata-egress-blocked"].evidence == "not reported" with input as {"node": {"facts": {}}}
}
